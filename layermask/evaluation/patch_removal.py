"""Experiment 2, missingness bias under patch removal (the paper's segment-removal experiment).

Every photo's 16×16 cells are hidden in random orders: order ``o`` at fraction ``f`` hides the
first ``round(f × S)`` of its ``S`` cells, so the masks of one order grow with ``f``. Each strategy
scores every masked copy, and the masked predictions are compared with the photo's unmasked one:

- *unchanged top-1 share*: the masked top-1 class is the unmasked top-1 class;
- *mean KL*: KL(p_unmasked ‖ p_masked) in nats, averaged over masked copies;
- *artifact-class rate*: the masked top-1 class is not among the photo's :data:`ARTIFACT_TOP_K`
  most probable unmasked classes ("never predicted unmasked"): the bias towards classes that the
  hiding itself suggests, such as the "jigsaw puzzle" or "crossword" a patchwork of grey squares
  resembles;
- *label accuracy*, on the photos with honest labels only: the masked top-1 class is one of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layermask.evaluation.common import EvaluationSettings, Section, patch_grid, strategies
from layermask.evaluation.photos import Photo, load_photos
from layermask.evaluation.plots import line_plot, new_figure, save_figure, strategy_legend
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.masking.strategies import cached_masker
from layermask.models.registry import LoadedModel

__all__ = ["ARTIFACT_TOP_K", "METRICS", "artifact_predictions", "kl_divergence", "removal_rows", "run"]

ARTIFACT_TOP_K = 5
"""A masked prediction is an artifact class when it is outside the unmasked top-``ARTIFACT_TOP_K``."""

METRICS = {"unchanged_top1_share": "unchanged top-1", "mean_kl": "mean KL(unmasked ‖ masked) (nats)",
           "artifact_rate": "artifact-class rate", "label_accuracy": "top-1 accuracy (labelled photos)"}

_FLOOR = float(np.finfo(np.float32).tiny)  # float32 softmax underflows to 0 for very unlikely classes


def kl_divergence(reference: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """KL(reference ‖ masked) in nats, per row of two N×C probability arrays (or a C reference for all rows).

    Terms where the reference is 0 count 0; masked probabilities are floored at float32's smallest
    normal number, the resolution of the probabilities they come from.
    """
    reference = np.broadcast_to(reference, masked.shape)
    log_ratio = np.log(np.where(reference > 0, reference, 1.0)) - np.log(np.maximum(masked, _FLOOR))
    return np.maximum((reference * log_ratio).sum(axis=-1), 0.0)


def artifact_predictions(unmasked: np.ndarray, masked_top1: np.ndarray, k: int = ARTIFACT_TOP_K) -> np.ndarray:
    """Which masked top-1 classes (N ints) lie outside the ``k`` most probable classes of ``unmasked`` (C probs)."""
    top_k = np.argsort(unmasked)[::-1][:k]
    return ~np.isin(masked_top1, top_k)


def removal_rows(cells: int, fractions: tuple[float, ...], orders: int, rng: np.random.Generator) -> np.ndarray:
    """Keep rows (fractions × orders × cells, 0/1): order ``o`` at fraction ``f`` hides its first ``round(f·S)``."""
    rows = np.ones((len(fractions), orders, cells), dtype=np.float32)
    for order in range(orders):
        permutation = rng.permutation(cells)
        for index, fraction in enumerate(fractions):
            rows[index, order, permutation[: round(fraction * cells)]] = 0.0
    return rows


def _unmasked(model: LoadedModel, image: torch.Tensor) -> np.ndarray:
    """The unmasked class probabilities: the plain network, or the mask-aware runtime with nothing hidden."""
    with torch.inference_mode():
        if model.network is not None:
            logits = model.network(image.to(model.device))
        else:
            logits = cached_masker("layer", model)(image, torch.ones(1, 1, *model.input_size))
    return logits.softmax(dim=-1)[0].double().cpu().numpy()


class _Tally:
    """Per strategy and fraction, the sums behind the curves, and the artifact classes' counts."""

    def __init__(self, fractions: tuple[float, ...]) -> None:
        self.fractions = fractions
        shape = (len(strategies()), len(fractions))
        self.unchanged, self.kl, self.artifact, self.count = (np.zeros(shape) for _ in range(4))
        self.correct, self.labelled = np.zeros(shape), np.zeros(shape)
        self.classes: dict[str, Counter[int]] = {s: Counter() for s in strategies()}

    def add(self, strategy: str, photo: Photo, unmasked: np.ndarray, masked: np.ndarray) -> None:
        """``masked``: fractions × orders × C probabilities of one photo under one strategy."""
        s = strategies().index(strategy)
        top1 = masked.argmax(axis=-1)
        artifact = artifact_predictions(unmasked, top1.ravel()).reshape(top1.shape)
        self.unchanged[s] += (top1 == unmasked.argmax()).sum(axis=1)
        self.kl[s] += kl_divergence(unmasked, masked).sum(axis=1)
        self.artifact[s] += artifact.sum(axis=1)
        self.count[s] += top1.shape[1]
        self.classes[strategy].update(top1[artifact].tolist())
        if photo.labels:
            self.correct[s] += np.isin(top1, photo.labels).sum(axis=1)
            self.labelled[s] += top1.shape[1]

    def curves(self) -> dict[str, dict[str, list[float]]]:
        count, labelled = np.maximum(self.count, 1), np.maximum(self.labelled, 1)
        values = {"unchanged_top1_share": self.unchanged / count, "mean_kl": self.kl / count,
                  "artifact_rate": self.artifact / count, "label_accuracy": self.correct / labelled}
        return {strategy: {name: [float(v) for v in array[s]] for name, array in values.items()}
                for s, strategy in enumerate(strategies())}


def measure(model: LoadedModel, settings: EvaluationSettings,
            progress: Callable[[str], None] | None = None) -> tuple[_Tally, list[Photo]]:
    photos = load_photos(settings.photos)
    cells = patch_grid(model.input_size, settings.patch_size)
    # Fraction 0 hides nothing whatever the order: one row stands for all of them.
    hiding = tuple(f for f in settings.removal_fractions if round(f * (int(cells.max()) + 1)) > 0)
    tally = _Tally(settings.removal_fractions)
    for index, photo in enumerate(photos):
        image = model.preprocess(photo.pixels).unsqueeze(0)
        unmasked = _unmasked(model, image)
        rows = removal_rows(int(cells.max()) + 1, hiding, settings.removal_orders,
                            np.random.default_rng([settings.seed, 2, index]))
        flat = np.concatenate([np.ones((1, rows.shape[2]), np.float32), rows.reshape(-1, rows.shape[2])])
        jobs = [ScoringJob(image, strategy, segments=cells, rows=flat) for strategy in strategies()]
        for strategy, probabilities in zip(strategies(), score_jobs(model, jobs, settings.batch_size)):
            by_fraction = {0.0: np.broadcast_to(probabilities[0], (settings.removal_orders, model.num_classes))}
            by_fraction.update(zip(hiding, probabilities[1:].reshape(len(hiding), settings.removal_orders, -1)))
            tally.add(strategy, photo, unmasked, np.stack([by_fraction.get(f, by_fraction[0.0])
                                                           for f in settings.removal_fractions]))
        if progress is not None:
            progress(f"patch removal: {photo.name} done ({index + 1}/{len(photos)}, {len(flat)} rows per strategy)")
    return tally, photos


def run(model: LoadedModel, settings: EvaluationSettings, output: Path,
        progress: Callable[[str], None] | None = None) -> Section:
    """Experiment 2: the curves per strategy, the most frequent artifact classes, two plots."""
    tally, photos = measure(model, settings, progress)
    curves: dict[str, dict[str, Any]] = dict(tally.curves())
    labelled = [p.name for p in photos if p.labels]
    hiding = [i for i, f in enumerate(settings.removal_fractions) if f > 0]
    overall: dict[str, dict[str, Any]] = {
        s: {name: float(np.mean([values[i] for i in hiding])) for name, values in curves[s].items()}
        for s in strategies()
    }
    artifacts = {s: [{"class": c, "name": model.class_names[c], "count": n,
                      "share": n / max(sum(tally.classes[s].values()), 1)}
                     for c, n in tally.classes[s].most_common(8)] for s in strategies()}
    if not labelled:
        for values in (*curves.values(), *overall.values()):
            values["label_accuracy"] = None
    figures = [_plot(curves, settings, ["unchanged_top1_share", "mean_kl", "artifact_rate"],
                     output / "patch_removal.png")]
    if labelled:
        figures.append(_plot(curves, settings, ["label_accuracy"], output / "patch_removal_accuracy.png"))
    summary: dict[str, Any] = {
        "photos": [p.name for p in photos], "labelled_photos": labelled, "fractions": list(settings.removal_fractions),
        "orders_per_fraction": settings.removal_orders, "patch_size": settings.patch_size,
        "artifact_definition": f"masked top-1 class not among the unmasked top-{ARTIFACT_TOP_K} classes of that photo",
        "strategies": list(strategies()), "curves": curves, "overall": overall, "artifact_classes": artifacts,
    }
    markdown = _markdown(summary, photos, settings, figures)
    return Section("Missingness bias under patch removal", markdown, figures, summary)


def _plot(curves: dict[str, dict[str, Any]], settings: EvaluationSettings, metrics: list[str],
          path: Path) -> Path:
    figure, axes = new_figure(len(metrics))
    x = [100 * f for f in settings.removal_fractions]
    for ax, metric in zip(axes, metrics):
        series = {s: curves[s][metric] for s in strategies()}
        ylim = None if metric == "mean_kl" else (-0.02, 1.02)
        line_plot(ax, x, series, xlabel="image hidden (%)", ylabel=METRICS[metric], ylim=ylim)
    strategy_legend(figure, strategies())
    return save_figure(figure, path)


def _metric_table(summary: dict[str, Any], metric: str, percent: bool) -> list[str]:
    lines = [f"| hidden | {' | '.join(strategies())} |", "|---:|" + "---:|" * len(strategies())]
    for i, fraction in enumerate(summary["fractions"]):
        cells = [summary["curves"][s][metric][i] for s in strategies()]
        lines.append(f"| {fraction:.0%} | " + " | ".join(f"{v:.1%}" if percent else f"{v:.3f}" for v in cells) + " |")
    return lines


def _markdown(summary: dict[str, Any], photos: list[Photo], settings: EvaluationSettings, figures: list[Path]) -> str:
    orders = summary["orders_per_fraction"]
    lines = [
        f"Each of {len(photos)} photos ({', '.join(p.name for p in photos)}) has its "
        f"{settings.patch_size}×{settings.patch_size} cells hidden in {orders} random orders (seeded); at fraction "
        f"f an order hides its first round(f × cells) cells, so each point is {len(photos) * orders} masked images "
        f"per strategy (fraction 0 hides nothing). An *artifact class* is a masked top-1 class that is "
        f"{summary['artifact_definition'].removeprefix('masked top-1 class ')}.",
        "", f"![unchanged top-1, KL divergence and artifact-class rate per strategy]({figures[0].name})", "",
        "**Share of unchanged top-1 predictions**", "", *_metric_table(summary, "unchanged_top1_share", True), "",
        "**Mean KL divergence from the unmasked prediction** (nats)", "", *_metric_table(summary, "mean_kl", False),
        "", "**Artifact-class rate**", "", *_metric_table(summary, "artifact_rate", True), "",
        "**Most frequent artifact classes** (over all fractions; share of that strategy's artifact predictions)", "",
        "| strategy | artifact rate (f > 0) | classes |", "|---|---:|---|",
    ]
    for s in strategies():
        classes = ", ".join(f"{a['name']} ({a['share']:.0%})" for a in summary["artifact_classes"][s]) or "none"
        lines.append(f"| {s} | {summary['overall'][s]['artifact_rate']:.1%} | {classes} |")
    if summary["labelled_photos"]:
        labels = "; ".join(f"{p.name}: {', '.join(p.label_names)}" for p in photos if p.labels)
        lines += ["", "**Top-1 accuracy against the photos' true labels** (labelled photos only; a prediction "
                  f"counts as correct when it is one of the photo's accepted classes: {labels})", "",
                  f"![top-1 accuracy per strategy]({figures[1].name})", "",
                  *_metric_table(summary, "label_accuracy", True)]
    lines += ["", "No registry package ships a labelled ImageNet-style image set that fits: `bird-or-bicycle` "
              "downloads its images at run time, `imagenet-x` holds annotations only, `imagenet-w` watermarking "
              "code and fonts, `tiny-imagenet-torch` and `image-tagger` no images. The accuracy above therefore "
              "rests on the labelled photos alone."]
    return "\n".join(lines)
