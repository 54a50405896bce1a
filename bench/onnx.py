"""Throughput of the layer-masked forward: ONNX Runtime (CPU) against PyTorch (CPU), in one run.

resnet50 (seeded random weights) and efficientnet_lite0 (real weights), 224², masks hiding 50 %
of 16×16 patches, 2 threads for both, interleaved repetitions, medians.

    .venv/bin/python bench/onnx.py [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _unshadow  # noqa: F401  (before anything imports the onnx package)
import onnxruntime as ort
import torch
import torchvision

import layermask
from layermask.masking.masks import random_patch_masks
from layermask.onnx.export import export_onnx
from layermask.onnx.runtime import OnnxMaskedModel


def loaded(name: str) -> layermask.LoadedModel:
    if name == "efficientnet_lite0":
        return layermask.load_model(name)
    torch.manual_seed(0)
    return layermask.LoadedModel(name, torchvision.models.get_model(name).eval(), layermask.Preprocessing())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    masks = random_patch_masks(args.batch, (224, 224), 16, 0.5, seed=0)
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, 2 threads, batch {args.batch}, "
          f"median of {args.repeats}")
    print("| model | PyTorch (images/s) | ONNX Runtime CPU (images/s) | ORT / PyTorch |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in args.models:
            model = loaded(name)
            runs = {"torch": layermask.layer_mask(model.torch_network()),
                    "onnx": OnnxMaskedModel(export_onnx(model, Path(tmp) / f"{name}.onnx"), ["CPUExecutionProvider"],
                                            threads=2)}
            times: dict[str, list[float]] = {k: [] for k in runs}
            for run in runs.values():
                run(images, masks)
            for _ in range(args.repeats):
                for key, run in runs.items():
                    start = time.perf_counter()
                    run(images, masks)
                    times[key].append(time.perf_counter() - start)
            rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
            print(f"| {name} | {rate['torch']:.1f} | {rate['onnx']:.1f} | {rate['onnx'] / rate['torch']:.2f}× |",
                  flush=True)


if __name__ == "__main__":
    main()
