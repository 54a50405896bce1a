"""1,000-sample LIME on EfficientNet-Lite0: layermask (layer masking) against the ``lime`` package.

Both explain skimage's ``chelsea`` at 224² over the same quickshift segmentation. lime runs its
``LimeImageExplainer`` with a grey ``hide_color`` (0 after normalisation) and its default
``batch_size=10``; layermask runs ``explain(..., masking="layer")`` with its default batch size,
in a process set up as the ``layermask`` command sets itself up (``keep_freed_memory``).
``--tuned-lime`` also runs lime in a process with that allocator setting, to show how much of
the difference it accounts for. ``--plain-process`` instead runs both as a researcher's script
would: a fresh process that imports the library and explains, with no setup at all (no
``keep_freed_memory``, no thread count; layermask switches the allocator itself at the first
``explain``). Each measurement runs in a fresh child process, interleaved, so peak RSS is per run;
the table gives medians, with the user and system CPU time of the explanation (measured in the
child around the call) and of the whole child process (``RUSAGE_CHILDREN``, imports and model
load included).

    .venv/bin/python bench/lime.py [--repeats 3] [--samples 1000] [--tuned-lime]
    .venv/bin/python bench/lime.py --plain-process [--repeats 3] [--samples 1000]
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


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _cpu_since(before: tuple[float, float]) -> dict[str, float]:
    user, system = _cpu()
    return {"user_s": user - before[0], "sys_s": system - before[1]}


def run_layermask(samples: int, batch_size: int | None) -> dict[str, float]:
    from layermask.explanation.lime import explain

    model, photo, _, segments = _setup()
    cpu, start = _cpu(), time.perf_counter()
    explanation = explain(model, photo, masking="layer", segmentation=segments, num_samples=samples,
                          batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **_cpu_since(cpu), "segments": explanation.num_segments, **explanation.timings}


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
    cpu, start = _cpu(), time.perf_counter()
    explainer.explain_instance(normalised, classify, top_labels=1, hide_color=0.0, num_samples=samples,
                               segmentation_fn=lambda image: segments, random_seed=0)
    return {"seconds": time.perf_counter() - start, **_cpu_since(cpu), "segments": int(segments.max()) + 1}


def child(which: str, samples: int, batch_size: int | None) -> None:
    """One measurement; the ``-plain`` kinds do no setup at all, as a researcher's script would not."""
    if not which.endswith("-plain"):
        from layermask.allocator import keep_freed_memory

        torch.set_num_threads(2)
        if which in ("layermask", "lime-tuned"):
            keep_freed_memory()
    result = run_layermask(samples, batch_size) if which.startswith("layermask") else run_lime(samples)
    if which == "layermask-plain":
        from layermask.allocator import freed_memory_kept

        result["freed_memory_kept"] = float(freed_memory_kept())
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
    parser.add_argument("--plain-process", action="store_true",
                        help="both as a plain library call in a fresh process, with no setup")
    parser.add_argument("--child", choices=["layermask", "lime", "lime-tuned", "layermask-plain", "lime-plain"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.samples, args.batch_size)
        return
    if args.batch_sweep:
        batch_sweep([4, 8, 16, 32, 64], repeats=4)
        return
    ours_key, theirs_key = ("layermask-plain", "lime-plain") if args.plain_process else ("layermask", "lime")
    results: dict[str, list[dict[str, float]]] = {ours_key: [], theirs_key: []}
    if args.tuned_lime and not args.plain_process:
        results["lime-tuned"] = []
    for _ in range(args.repeats):
        for which in results:
            command = [sys.executable, __file__, "--child", which, "--samples", str(args.samples)]
            if args.batch_size:
                command += ["--batch-size", str(args.batch_size)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = json.loads(output.strip().splitlines()[-1])
            result["process_user_s"] = after.ru_utime - before.ru_utime
            result["process_sys_s"] = after.ru_stime - before.ru_stime
            results[which].append(result)
            print(which, result, file=sys.stderr, flush=True)
    report(args, results, ours_key, theirs_key)


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]], ours_key: str,
           theirs_key: str) -> None:
    """The table of medians, the ratio, and for ``--plain-process`` whether the goals are met."""

    def median(which: str, key: str) -> float:
        return statistics.median(r[key] for r in results[which])

    ours, theirs = median(ours_key, "seconds"), median(theirs_key, "seconds")
    threads = "default threads, no setup" if args.plain_process else "2 threads"
    print(f"{args.samples} samples, {int(results[theirs_key][0]['segments'])} quickshift segments, "
          f"median of {args.repeats}, torch {torch.__version__}, {threads}")
    print("| explainer | time (s) | user / sys CPU, explanation (s) | user / sys CPU, whole process (s) "
          "| peak RSS (MiB) |\n|---|---|---|---|---|")
    labels = {"layermask": "layermask, layer masking", "lime": "lime 0.2.0.1, grey, batch 10",
              "lime-tuned": "lime 0.2.0.1, grey, batch 10, keep_freed_memory()",
              "layermask-plain": "layermask, layer masking, plain process",
              "lime-plain": "lime 0.2.0.1, grey, batch 10, plain process"}
    for which in results:
        print(f"| {labels[which]} | {median(which, 'seconds'):.2f} | {median(which, 'user_s'):.2f} / "
              f"{median(which, 'sys_s'):.2f} | {median(which, 'process_user_s'):.2f} / "
              f"{median(which, 'process_sys_s'):.2f} | {median(which, 'peak_rss_mib'):.0f} |")
    print(f"\nratio layermask / lime: {ours / theirs:.2f}×")
    if args.plain_process:
        share = median(ours_key, "sys_s") / max(median(ours_key, "user_s"), 1e-9)
        kept = all(r.get("freed_memory_kept") for r in results[ours_key])
        print(f"goal ≤ 0.50× lime: {'met' if ours / theirs <= 0.5 else 'NOT met'}; "
              f"layermask sys / user CPU {share:.1%} (goal < 15 %: {'met' if share < 0.15 else 'NOT met'}); "
              f"allocator switched on by explain: {kept}")
    if "lime-tuned" in results:
        tuned = statistics.median(r["seconds"] for r in results["lime-tuned"])
        print(f"ratio layermask / lime with keep_freed_memory(): {ours / tuned:.2f}×")


if __name__ == "__main__":
    main()
