"""Layer-masked forward time against the plain forward, in one run.

Setup (issue #2): CPU, 2 threads, batch 16, 224×224 inputs, masks hiding 50 % of 16×16 patches,
median of ``--repeats`` interleaved repetitions. Prints a Markdown table row per model.

    .venv/bin/python bench/masked_forward.py [--repeats 7] [--models resnet50 efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from layermask import layer_mask, load_model
from layermask.masking.masks import random_patch_masks


def network(name: str) -> torch.nn.Module:
    if name == "efficientnet_lite0":
        return load_model(name).network
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def timed(fn: Callable[[], object], timings: list[float]) -> None:
    start = time.perf_counter()
    fn()
    timings.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    masks = random_patch_masks(args.batch, (224, 224), patch=16, hidden_fraction=0.5, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.repeats}")
    print("| model | plain NCHW (s) | plain channels-last (s) | layer-masked (s) "
          "| masked / plain NCHW | masked / plain channels-last |")
    print("|---|---|---|---|---|---|")
    images_cl = images.contiguous(memory_format=torch.channels_last)
    for name in args.models:
        plain = network(name)
        masked = layer_mask(plain)
        runs: dict[str, Callable[[], object]] = {
            "plain": functools.partial(plain, images),
            "plain_cl": functools.partial(plain, images_cl),
            "masked": functools.partial(masked, images, masks),
        }
        timings: dict[str, list[float]] = {key: [] for key in runs}
        with torch.inference_mode():
            for run in runs.values():  # warm-up
                run()
            for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
                for key, run in runs.items():
                    timed(run, timings[key])
        p, c, m = (statistics.median(timings[key]) for key in ("plain", "plain_cl", "masked"))
        print(f"| {name} | {p:.3f} | {c:.3f} | {m:.3f} | {m / p:.2f}× | {m / c:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
