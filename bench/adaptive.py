"""Adaptive sample counts (``num_samples="auto"``) against fixed counts, and the time of each method.

Default mode: on real photos (skimage and sklearn, :func:`_photos`), EfficientNet-Lite0 with layer
masking and quickshift segments, explain the photo's top class three ways:

- a **reference** LIME fit with 5,000 samples and an independent seed (so that it shares no rows
  with the runs it judges);
- ``num_samples="auto"`` (the default :class:`~layermask.explanation.options.AdaptiveSampling`);
- a fixed 1,000 samples;

and report, per photo and as medians, the samples used, the time and the cosine similarity of each
run's segment weights with the reference's. ``--method kernel_shap`` does the same for KernelSHAP.

``--methods`` mode: the time of one explanation of ``chelsea`` per method (``lime`` and
``kernel_shap`` at 1,000 samples, ``occlusion`` with its default window), interleaved, medians.

    .venv/bin/python bench/adaptive.py [--photos 8] [--method lime] [--reference 5000]
    .venv/bin/python bench/adaptive.py --methods [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import layermask
from layermask.allocator import keep_freed_memory
from layermask.explanation.adaptive import cosine

REFERENCE_SEED = 1_000_003


def _photos() -> dict[str, Callable[[], np.ndarray]]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    def sample(index: int) -> Callable[[], np.ndarray]:
        return lambda: load_sample_images().images[index]

    return {"chelsea": data.chelsea, "coffee": data.coffee, "astronaut": data.astronaut, "rocket": data.rocket,
            "china": sample(0), "flower": sample(1), "motorcycle": lambda: data.stereo_motorcycle()[0],
            "hubble": data.hubble_deep_field, "immunohistochemistry": data.immunohistochemistry}


def _timed(model: layermask.LoadedModel, photo: np.ndarray, **options: object) -> tuple[layermask.Explanation, float]:
    started = time.perf_counter()
    explanation = layermask.explain(model, photo, masking="layer", **options)  # type: ignore[arg-type]
    return explanation, time.perf_counter() - started


def compare_on_photos(count: int, method: str, reference_samples: int) -> None:
    model = layermask.load_model("efficientnet_lite0")
    photos = list(_photos().items())[:count]
    layermask.explain(model, photos[0][1](), num_samples=64)  # warm-up: conversion, allocator, kernels
    rows = []
    for name, load in photos:
        photo = load()
        reference, _ = _timed(model, photo, method=method, num_samples=reference_samples, seed=REFERENCE_SEED)
        label = reference.labels[0]
        weights = reference.explanations[label].weights
        auto, auto_s = _timed(model, photo, method=method, num_samples="auto", labels=[label])
        fixed, fixed_s = _timed(model, photo, method=method, num_samples=1000, labels=[label])
        row = {"photo": name, "segments": reference.num_segments, "auto_samples": auto.num_samples,
               "converged": auto.converged, "auto_s": auto_s,
               "auto_cosine": cosine(auto.explanations[label].weights, weights),
               "fixed_s": fixed_s, "fixed_cosine": cosine(fixed.explanations[label].weights, weights)}
        rows.append(row)
        print(f"{name:>20}: {row['segments']:3d} segments | auto {row['auto_samples']:4d} samples "
              f"(converged {row['converged']}) {auto_s:6.2f} s cosine {row['auto_cosine']:.4f} | "
              f"fixed 1000 {fixed_s:6.2f} s cosine {row['fixed_cosine']:.4f}", flush=True)
    print(f"\n{method}, Lite0, layer masking, reference {reference_samples} samples (seed {REFERENCE_SEED}); "
          f"medians over {len(rows)} photos:")
    print("| run | samples used | time (s) | cosine with the reference |")
    print("|---|---|---|---|")
    print(f"| auto | {statistics.median(r['auto_samples'] for r in rows):.0f} | "
          f"{statistics.median(r['auto_s'] for r in rows):.2f} | "
          f"{statistics.median(r['auto_cosine'] for r in rows):.4f} |")
    print(f"| fixed 1,000 | 1000 | {statistics.median(r['fixed_s'] for r in rows):.2f} | "
          f"{statistics.median(r['fixed_cosine'] for r in rows):.4f} |")
    print(f"converged: {sum(bool(r['converged']) for r in rows)} of {len(rows)}; "
          f"min auto cosine {min(r['auto_cosine'] for r in rows):.4f}")


def time_methods(repeats: int) -> None:
    model = layermask.load_model("efficientnet_lite0")
    photo = _photos()["chelsea"]()
    runs: dict[str, dict[str, object]] = {
        "lime": {"method": "lime", "num_samples": 1000},
        "kernel_shap": {"method": "kernel_shap", "num_samples": 1000},
        "occlusion": {"method": "occlusion"},
    }
    layermask.explain(model, photo, num_samples=64)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rows: dict[str, int] = {}
    for _ in range(repeats):
        for name, options in runs.items():
            explanation, seconds = _timed(model, photo, **options)
            times[name].append(seconds)
            rows[name] = explanation.num_samples
            print(f"{name}: {seconds:.2f} s ({explanation.num_samples} rows)", flush=True)
    print(f"\nchelsea, Lite0, layer masking, CPU, medians of {repeats} interleaved runs:")
    print("| method | rows scored | time (s) | ms per row |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {rows[name]} | {median:.2f} | {1000 * median / rows[name]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--method", default="lime", choices=("lime", "kernel_shap"))
    parser.add_argument("--reference", type=int, default=5000)
    parser.add_argument("--methods", action="store_true", help="time one explanation per method instead")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.methods:
        time_methods(args.repeats)
    else:
        compare_on_photos(args.photos, args.method, args.reference)


if __name__ == "__main__":
    main()
