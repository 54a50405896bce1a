"""1,000-sample LIME on EfficientNet-Lite0: layermask (layer masking) against the ``lime`` package.

Both explain skimage's ``chelsea`` at 224² over the same quickshift segmentation. lime runs its
``LimeImageExplainer`` with a grey ``hide_color`` (0 after normalisation) and its default
``batch_size=10``; layermask runs ``explain(..., masking="layer")`` with its default batch size,
in a process set up as the ``layermask`` command sets itself up (``keep_freed_memory``).
``--tuned-lime`` also runs lime in a process with that allocator setting, to show how much of
the difference it accounts for. Each measurement runs in a fresh child process, interleaved, so
peak RSS is per run; the table gives medians.

    .venv/bin/python bench/lime.py [--repeats 3] [--samples 1000] [--tuned-lime]
    .venv/bin/python bench/lime.py --batch-sweep        # per-image time of the masked forward by batch
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import _unshadow  # noqa: F401  (before anything imports the lime package)
import numpy as np
import torch


def _setup() -> tuple[object, np.ndarray, np.ndarray, np.ndarray]:
    """The model, the photo, the 224² crop the model sees, and its quickshift segments."""
    from skimage import data

    import layermask
    from layermask.explanation.segmentation import segment

    model = layermask.load_model("efficientnet_lite0")
    photo = data.chelsea()
    crop = np.asarray(model.preprocessing.crop(photo))
    return model, photo, crop, segment(crop, "quickshift")


def run_layermask(samples: int, batch_size: int | None) -> dict[str, float]:
    from layermask.explanation.lime import explain

    model, photo, _, segments = _setup()
    start = time.perf_counter()
    explanation = explain(model, photo, masking="layer", segmentation=segments, num_samples=samples,
                          batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "segments": explanation.num_segments, **explanation.timings}


def run_lime(samples: int) -> dict[str, float]:
    from lime import lime_image

    model, _, crop, segments = _setup()
    network = model.network  # type: ignore[attr-defined]
    normalised = model.preprocessing.normalise(crop).permute(1, 2, 0).numpy().astype(np.float64)  # type: ignore[attr-defined]

    def classify(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            return network(x).softmax(dim=-1).numpy()

    explainer = lime_image.LimeImageExplainer(random_state=0)
    start = time.perf_counter()
    explainer.explain_instance(normalised, classify, top_labels=1, hide_color=0.0, num_samples=samples,
                               segmentation_fn=lambda image: segments, random_seed=0)
    return {"seconds": time.perf_counter() - start, "segments": int(segments.max()) + 1}


def child(which: str, samples: int, batch_size: int | None) -> None:
    from layermask.allocator import keep_freed_memory

    torch.set_num_threads(2)
    if which in ("layermask", "lime-tuned"):
        keep_freed_memory()
    result = run_layermask(samples, batch_size) if which == "layermask" else run_lime(samples)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def batch_sweep(sizes: list[int], repeats: int, rows_per_round: int = 256) -> None:
    """Per-image time of the layer-masked forward by batch size: each round runs the same
    ``rows_per_round`` LIME rows at every size in turn (interleaved, so all sizes share the
    machine's state); medians over ``repeats`` rounds."""
    from layermask.allocator import keep_freed_memory
    from layermask.explanation.lime import sample_perturbations
    from layermask.explanation.scoring import rows_to_masks
    from layermask.masking.strategies import get_masker

    torch.set_num_threads(2)
    keep_freed_memory()
    model, _, crop, segments = _setup()
    image = model.preprocessing.normalise(crop).unsqueeze(0)  # type: ignore[attr-defined]
    masker = get_masker("layer", model)  # type: ignore[arg-type]
    segment_map = torch.from_numpy(segments).long()
    rows = sample_perturbations(rows_per_round, int(segments.max()) + 1, 0.5, seed=0)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for size in sizes:
        masker(image, rows_to_masks(rows[:size], segment_map))
    for _ in range(repeats):
        for size in sizes:
            start = time.perf_counter()
            for first in range(0, rows_per_round, size):
                masker(image, rows_to_masks(rows[first : first + size], segment_map))
            times[size].append((time.perf_counter() - start) / rows_per_round * 1000)
    print("| batch size | ms per image (median) |\n|---|---|")
    for size, values in times.items():
        print(f"| {size} | {statistics.median(values):.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=None, help="layermask batch size (default: its own)")
    parser.add_argument("--batch-sweep", action="store_true")
    parser.add_argument("--tuned-lime", action="store_true", help="also run lime with keep_freed_memory()")
    parser.add_argument("--child", choices=["layermask", "lime", "lime-tuned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.samples, args.batch_size)
        return
    if args.batch_sweep:
        batch_sweep([4, 8, 16, 32, 64], repeats=4)
        return
    results: dict[str, list[dict[str, float]]] = {"layermask": [], "lime": []}
    if args.tuned_lime:
        results["lime-tuned"] = []
    for _ in range(args.repeats):
        for which in results:
            command = [sys.executable, __file__, "--child", which, "--samples", str(args.samples)]
            if args.batch_size:
                command += ["--batch-size", str(args.batch_size)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[which].append(json.loads(output.strip().splitlines()[-1]))
            print(which, results[which][-1], file=sys.stderr, flush=True)
    ours = statistics.median(r["seconds"] for r in results["layermask"])
    theirs = statistics.median(r["seconds"] for r in results["lime"])
    print(f"{args.samples} samples, {int(results['lime'][0]['segments'])} quickshift segments, "
          f"median of {args.repeats}, torch {torch.__version__}, 2 threads")
    print("| explainer | time (s) | peak RSS (MiB) |\n|---|---|---|")
    labels = {"layermask": "layermask, layer masking", "lime": "lime 0.2.0.1, grey, batch 10",
              "lime-tuned": "lime 0.2.0.1, grey, batch 10, keep_freed_memory()"}
    for which in results:
        label = labels[which]
        rss = statistics.median(r["peak_rss_mib"] for r in results[which])
        seconds = statistics.median(r["seconds"] for r in results[which])
        print(f"| {label} | {seconds:.2f} | {rss:.0f} |")
    print(f"\nratio layermask / lime: {ours / theirs:.2f}×")
    if args.tuned_lime:
        tuned = statistics.median(r["seconds"] for r in results["lime-tuned"])
        print(f"ratio layermask / lime with keep_freed_memory(): {ours / tuned:.2f}×")


if __name__ == "__main__":
    main()
