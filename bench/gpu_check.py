"""The GPU check (issue #6): one command for a lent GPU machine, under 8 minutes, printing one table.

(Over 300 lines on purpose: it travels to the GPU machine as one self-contained script.)

    bash bench/gpu_check.sh [--wheels DIR] [--report FILE]    # on the GPU machine; see gpu_check.sh
    bash bench/gpu_check.sh --dry-run                         # anywhere: a few iterations on the CPU

It runs the checkout on the machine's own torch; it needs no ONNX export, TorchServe, Java or
network. For EfficientNet-Lite0 (its real weights) and ResNet-50 (seeded random weights) it reports:

- parity: the layer-masked model on the device against the CPU in float32 with TF32 off (max
  |Δlogit| relative to max |logit|, top-1 agreement), and a LIME-100 explanation on both;
- forward: the masked forward against the plain one, images/s and the time ratio, in fp32 (cuDNN
  defaults) and under fp16/bf16 autocast with inputs in that precision (where autocast fails, the
  weights are cast instead and the row says so);
- LIME-1000 explanations/s through ``layermask.explain`` (masks built and scored on the device,
  ridge fit on the CPU, the quickshift segmentation computed beforehand) at the best of a few
  batch sizes, and that batch size under fp16 autocast;
- torch.compile and CUDA graphs of the masked Lite0, each tried in a time-boxed child process and
  reported as skipped, with the reason, where they fail or do not help.

Not measured here, for want of the hardware: ONNX Runtime's CUDA/TensorRT providers and TorchServe
on a GPU. Their device choice is correct by construction and tested on the CPU by inspecting the
provider options and device ids (tests/core/test_devices.py, tests/torchserve/test_handler_devices.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import _unshadow  # noqa: F401  (before anything imports the lime or onnx package)
import numpy as np
import torch
import torchvision
from skimage import data

import layermask
from layermask.devices import resolve_device
from layermask.explanation.segmentation import segment
from layermask.masking.masks import random_patch_masks
from layermask.masking.strategies import LayerMasker, cached_masker

MODELS = ("efficientnet_lite0", "resnet50")
REDUCED = {"fp16": torch.float16, "bf16": torch.bfloat16}
Row = tuple[str, str, str, str, str]  # check, model, precision, result, notes


@dataclass(frozen=True)
class Sizes:
    batch: int                       # images per forward in the throughput rows
    repeats: int                     # timed runs (median) after one warm-up
    parity_images: int
    parity_samples: int              # LIME samples of the parity explanation
    lime_samples: int
    lime_batches: tuple[int, ...]
    lime_repeats: int
    compile_box_s: float
    graph_box_s: float


FULL = Sizes(batch=256, repeats=5, parity_images=16, parity_samples=64, lime_samples=1000,
             lime_batches=(100, 250, 500, 1000), lime_repeats=2, compile_box_s=150, graph_box_s=60)
DRY = Sizes(batch=2, repeats=1, parity_images=2, parity_samples=8, lime_samples=16, lime_batches=(8, 16),
            lime_repeats=1, compile_box_s=20, graph_box_s=20)


def load(name: str) -> layermask.LoadedModel:
    if name == "efficientnet_lite0":
        return layermask.load_model(name)
    torch.manual_seed(0)
    return layermask.LoadedModel(name, torchvision.models.get_model(name, weights=None).eval(),
                                 layermask.Preprocessing())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    run()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def exact_float32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    return nullcontext() if precision == "fp32" else torch.autocast(device.type, dtype=REDUCED[precision])


def short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:140] if str(error) else ''}"


def inputs(count: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(count, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    return images.to(device), random_patch_masks(count, (224, 224), 16, 0.5, seed=seed).to(device)


def parity(cpu: layermask.LoadedModel, on_device: layermask.LoadedModel, photo: np.ndarray, segments: np.ndarray,
           sizes: Sizes) -> tuple[list[Row], int]:
    images, masks = inputs(sizes.parity_images, torch.device("cpu"), seed=0)
    with exact_float32():
        expected = cached_masker("layer", cpu)(images, masks)
        logits = cached_masker("layer", on_device)(images.to(on_device.device), masks.to(on_device.device)).cpu()
        here, there = (layermask.explain(m, photo, segmentation=segments, num_samples=sizes.parity_samples, seed=0)
                       for m in (cpu, on_device))
    relative = (logits - expected).abs().max().item() / expected.abs().max().item()
    agree = int((logits.argmax(1) == expected.argmax(1)).sum())
    logits_ok = relative <= 1e-3 and agree >= len(images) - len(images) // 16
    label = here.labels[0]
    weights = float(np.abs(here.explanations[label].weights - there.explanations[label].weights).max()) \
        if here.labels == there.labels else float("inf")
    rows = [("parity: masked logits vs CPU", cpu.name, "fp32", f"max abs Δlogit / max abs logit {relative:.1e}, "
             f"top-1 {agree}/{len(images)}", "ok" if logits_ok else "FAIL"),
            (f"parity: LIME-{sizes.parity_samples} weights vs CPU", cpu.name, "fp32",
             f"max abs Δweight {weights:.1e}", "ok" if weights <= 1e-3 else "FAIL")]
    return rows, (not logits_ok) + (weights > 1e-3)


def forward(model: layermask.LoadedModel, precision: str, sizes: Sizes) -> Row:
    """Plain and masked forward throughput in one precision (autocast, or cast weights where it fails)."""
    device, network = model.device, model.torch_network()
    images, masks = inputs(sizes.batch, device, seed=1)
    plain: Callable[[torch.Tensor], torch.Tensor] = network
    masked = cached_masker("layer", model)
    context, note = autocast(device, precision), "autocast" if precision != "fp32" else "cuDNN defaults"
    if precision != "fp32":
        images = images.to(REDUCED[precision])  # masks follow the images' dtype
        try:
            with torch.inference_mode(), autocast(device, precision):
                masked(images[:2], masks[:2])
        except RuntimeError as error:
            note = f"autocast failed ({short(error)}); weights cast"
            cast = copy.deepcopy(network).to(REDUCED[precision])
            plain, masked = cast, layermask.layer_mask(cast).to(device, REDUCED[precision])
            context = nullcontext()
    with torch.inference_mode(), context:
        plain_s = median_seconds(lambda: plain(images), device, sizes.repeats)
        masked_s = median_seconds(lambda: masked(images, masks), device, sizes.repeats)
    return (f"forward, batch {sizes.batch}", model.name, precision,
            f"masked {sizes.batch / masked_s:.0f} img/s, plain {sizes.batch / plain_s:.0f} img/s",
            f"masked/plain time {masked_s / plain_s:.2f}×; {note}")


def lime_rate(model: layermask.LoadedModel, photo: np.ndarray, segments: np.ndarray, sizes: Sizes,
              batch: int, precision: str = "fp32") -> float:
    def run() -> None:
        with autocast(model.device, precision):
            layermask.explain(model, photo, segmentation=segments, num_samples=sizes.lime_samples, batch_size=batch,
                              seed=0)

    return 1 / median_seconds(run, model.device, sizes.lime_repeats)


def lime(model: layermask.LoadedModel, photo: np.ndarray, segments: np.ndarray, sizes: Sizes) -> tuple[list[Row], int]:
    rates: dict[int, float] = {}
    shown: list[str] = []
    for batch in sizes.lime_batches:
        try:
            rates[batch] = lime_rate(model, photo, segments, sizes, batch)
            shown.append(f"{batch}: {rates[batch]:.2f}")
        except RuntimeError as error:  # out of memory at the larger batches
            shown.append(f"{batch}: {short(error)}")
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
    check, by_batch = f"LIME-{sizes.lime_samples} explanations/s", "by batch: " + ", ".join(shown)
    if not rates:
        return [(check, model.name, "fp32", "failed", by_batch)], sizes.lime_batches[0]
    best = max(rates, key=rates.__getitem__)
    rows = [(check, model.name, "fp32", f"{rates[best]:.2f}/s at batch {best}", by_batch)]
    try:
        rows.append((check, model.name, "fp16", f"{lime_rate(model, photo, segments, sizes, best, 'fp16'):.2f}/s "
                     f"at batch {best}", "autocast, fp32 inputs (as explain gives them)"))
    except RuntimeError as error:
        rows.append((check, model.name, "fp16", "failed", f"autocast: {short(error)}"))
    return rows, best


# ------------------------------------------------------ time-boxed probes


def probe(kind: str, device: torch.device, batch: int, sizes: Sizes) -> dict[str, object]:
    """In a child process: eager vs ``kind`` (compile, cudagraphs) on the masked Lite0 at ``batch``."""
    try:
        return measure_probe(kind, device, batch, sizes)
    except Exception as error:  # what fails is reported, not raised: the row says why it is skipped
        return {"note": f"failed: {short(error)}"}


def measure_probe(kind: str, device: torch.device, batch: int, sizes: Sizes) -> dict[str, object]:
    model = load("efficientnet_lite0").to(device)
    masker = cached_masker("layer", model)
    assert isinstance(masker, LayerMasker)
    images, masks = inputs(batch, device, seed=2)
    eager = batch / median_seconds(lambda: masker(images, masks), device, sizes.repeats)
    started = time.perf_counter()
    if kind == "compile":
        masker.model = torch.compile(masker.model)  # type: ignore[assignment]
        masker(*inputs(batch, device, seed=3))
        masker(images, masks)  # band sizes differ between mask batches: this may compile again
        setup_s = time.perf_counter() - started
        rate = batch / median_seconds(lambda: masker(images, masks), device, sizes.repeats)
    else:
        graph, inner = torch.cuda.CUDAGraph(), masker.model
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            inner(images, masks)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = inner(images, masks)
        setup_s = time.perf_counter() - started
        other_images, other_masks = inputs(batch, device, seed=3)
        images.copy_(other_images)
        masks.copy_(other_masks)
        graph.replay()
        with torch.inference_mode():
            if not torch.allclose(out, inner(images, masks), atol=1e-3):
                return {"note": "captured, but replays are wrong for other masks (band sizes are captured)"}
        rate = batch / median_seconds(graph.replay, device, sizes.repeats)
    result: dict[str, object] = {"eager": eager, "rate": rate, "setup_s": setup_s}
    if kind == "compile" and rate > eager:
        photo = data.chelsea()
        segments = segment(np.asarray(model.preprocessing.crop(photo)), "quickshift")
        result["lime"] = lime_rate(model, photo, segments, sizes, batch)
    return result


def probe_row(kind: str, device: torch.device, batch: int, sizes: Sizes, box_s: float, dry_run: bool) -> Row:
    name = {"compile": "torch.compile", "cudagraphs": "CUDA graphs"}[kind]
    if kind == "cudagraphs" and device.type != "cuda":
        return (name, "efficientnet_lite0", "fp32", "skipped", "needs CUDA")
    if box_s < 10:
        return (name, "efficientnet_lite0", "fp32", "skipped", "out of time")
    command = [sys.executable, __file__, "--probe", kind, "--device", str(device), "--probe-batch", str(batch),
               *(["--dry-run"] if dry_run else [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=box_s)
    except subprocess.TimeoutExpired:
        return (name, "efficientnet_lite0", "fp32", "skipped", f"not done within the {box_s:.0f} s time box")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return (name, "efficientnet_lite0", "fp32", "skipped", f"failed: {reason}")
    result = json.loads(lines[-1])
    if "rate" not in result:
        return (name, "efficientnet_lite0", "fp32", "skipped", str(result["note"]))
    helps = result["rate"] > result["eager"]
    lime_text = f"; LIME {result['lime']:.2f}/s" if "lime" in result else ""
    return (name, "efficientnet_lite0", "fp32",
            f"masked {result['rate']:.0f} vs eager {result['eager']:.0f} img/s at batch {batch}{lime_text}",
            f"{'helps' if helps else 'does not help: not used'}; setup {result['setup_s']:.0f} s")


# ------------------------------------------------------------------ main


def header(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cuda = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if device.type == "cuda" else ""
    return (f"# GPU check: {where}; torch {torch.__version__}, torchvision {torchvision.__version__}{cuda}, "
            f"Python {sys.version.split()[0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--dry-run", action="store_true", help="a few iterations (on the CPU unless --device)")
    parser.add_argument("--report", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--budget-s", type=float, default=420, help="seconds for the whole check, probes included")
    parser.add_argument("--probe", choices=("compile", "cudagraphs"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    sizes = DRY if args.dry_run else FULL
    try:
        device = resolve_device(args.device or ("cpu" if args.dry_run else "cuda"))
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    if args.probe:
        print(json.dumps(probe(args.probe, device, args.probe_batch, sizes)))
        return 0

    photo = data.chelsea()
    rows: list[Row] = []
    failures, lite0_batch = 0, sizes.lime_batches[-1]
    for name in MODELS:
        cpu, on_device = load(name), load(name).to(device)
        segments = segment(np.asarray(cpu.preprocessing.crop(photo)), "quickshift")
        found, failed = parity(cpu, on_device, photo, segments, sizes)
        rows += found
        failures += failed
        for precision in ("fp32", *REDUCED):
            try:
                rows.append(forward(on_device, precision, sizes))
            except RuntimeError as error:  # out of memory, an unsupported kernel
                rows.append((f"forward, batch {sizes.batch}", name, precision, "failed", short(error)))
        found, best = lime(on_device, photo, segments, sizes)
        rows += found
        lite0_batch = best if name == "efficientnet_lite0" else lite0_batch
        del cpu, on_device
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"... {name} done", file=sys.stderr, flush=True)
    for kind, box_s in (("compile", sizes.compile_box_s), ("cudagraphs", sizes.graph_box_s)):
        rows.append(probe_row(kind, device, lite0_batch, sizes, min(box_s, deadline - time.monotonic() - 15),
                              args.dry_run))

    table = [header(device), "", "| check | model | precision | result | notes |", "|---|---|---|---|---|",
             *(f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows)]
    print("\n".join(table))
    if args.report is not None:
        args.report.write_text("\n".join(table) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
