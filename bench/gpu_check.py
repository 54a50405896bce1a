"""The GPU check of issue #6: parity on CUDA (PyTorch and ONNX Runtime's CUDA/TensorRT providers)
and ResNet-50 throughput, in fp32 and fp16. Writes a Markdown report.

    bash bench/gpu_check.sh [REPORT]        # one command, meant to finish within 8 minutes
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _unshadow  # noqa: F401  (before anything imports the onnx package)
import numpy as np
import onnxruntime as ort
import torch
import torchvision

import layermask
from layermask.explanation.lime import rows_to_masks, sample_perturbations
from layermask.explanation.segmentation import segment
from layermask.masking.masks import random_patch_masks
from layermask.onnx.export import export_onnx
from layermask.onnx.runtime import OnnxMaskedModel


def resnet50() -> layermask.LoadedModel:
    torch.manual_seed(0)
    return layermask.LoadedModel("resnet50", torchvision.models.resnet50().eval(), layermask.Preprocessing())


def timed(fn, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", type=Path, nargs="?", default=Path("gpu_report.md"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    lines = [f"# GPU check\n\n{torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})\n"]
    failures = 0
    model = resnet50()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    masks = random_patch_masks(16, (224, 224), 16, 0.5, seed=0)
    with torch.inference_mode():
        reference = layermask.layer_mask(model.torch_network())(images, masks)
        scale = reference.abs().max().item()
        cuda_model = layermask.layer_mask(model.torch_network().cuda())
        diff = (cuda_model(images.cuda(), masks.cuda()).cpu() - reference).abs().max().item() / scale
        ok = diff <= 1e-3
        failures += not ok
        verdict = "ok" if ok else "FAIL"
        lines.append(f"- PyTorch CUDA vs CPU, fp32: max relative logit difference {diff:.2e} ({verdict})")
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(resnet50(), Path(tmp) / "resnet50.onnx")
            for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
                if provider not in ort.get_available_providers():
                    lines.append(f"- ONNX Runtime {provider}: not available")
                    continue
                runtime = OnnxMaskedModel(path, [provider, "CPUExecutionProvider"])
                diff = (runtime(images, masks) - reference).abs().max().item() / scale
                ok = diff <= 1e-3 and runtime.provider == provider
                failures += not ok
                lines.append(f"- ONNX Runtime {runtime.provider} vs PyTorch CPU: max relative difference "
                             f"{diff:.2e} ({'ok' if ok else 'FAIL'})")

        lines.append("\n| precision | masked forward, batch 256 (images/s) | LIME-1000 explanations/s (forwards) |"
                     "\n|---|---|---|")
        segments = torch.from_numpy(segment(np.zeros((224, 224, 3), np.uint8), "grid")).long()
        rows = sample_perturbations(1000, int(segments.max()) + 1, 0.5, seed=0)
        for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            masked = layermask.layer_mask(copy.deepcopy(model.torch_network()).cuda().to(dtype))
            image = images.cuda().to(dtype)
            batch = random_patch_masks(256, (224, 224), 16, 0.5, seed=1).cuda().to(dtype)
            seconds = timed(functools.partial(masked, image, batch))
            all_masks = rows_to_masks(rows, segments).cuda().to(dtype)

            def lime_forwards(masked=masked, image=image, all_masks=all_masks) -> None:  # type: ignore[no-untyped-def]
                for start in range(0, 1000, 500):
                    masked(image, all_masks[start : start + 500])

            lime = timed(lime_forwards, repeats=3)
            lines.append(f"| {precision} | {256 / seconds:.0f} | {1 / lime:.1f} |")
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
