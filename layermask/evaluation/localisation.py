"""Experiment 3, LIME localisation with ground truth: do the segment weights point at the pasted object?

On each composite (:mod:`layermask.evaluation.composites`) LIME explains the model's class for the
object with every strategy, on the same keep-matrix rows for all strategies (one matrix per
composite and segmentation), with three segmentations. The weights are scored against the pasted
region by the metric functions below; each is averaged over the composites with a percentile
bootstrap interval. Each composite's scores are kept in ``<output>/.cache/`` as soon as they are
computed, so an interrupted run (the full one takes hours on two cores) resumes at the next composite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layermask.evaluation.common import EvaluationSettings, Section, strategies
from layermask.evaluation.composites import Composite, composites_for
from layermask.evaluation.plots import bar_plot, new_figure, save_figure, strategy_legend
from layermask.explanation.lime import explain_many, plan_explanation, sample_perturbations
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.explanation.segmentation import segment
from layermask.models.registry import LoadedModel

__all__ = ["EVALUATION_MASKINGS", "METRICS", "SEGMENTATIONS", "Interval", "bootstrap_interval", "cosine_similarity",
           "ground_truth_segments", "jaccard_index", "pointing_hit", "run", "segment_ground_truth", "top_segments"]

SEGMENTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "quickshift": ("quickshift", {}),
    "grid 16×16": ("grid", {"patch_size": 16}),
    "slic 250": ("slic", {"n_segments": 250}),
}
"""The segmentations, by report name: (method, parameters) of :func:`~layermask.explanation.segmentation.segment`."""

EVALUATION_MASKINGS = ("layer", "grey")
"""The fixed maskings that hide the top segments in the ablation test."""

GROUND_TRUTH_SHARE = 0.5
"""A segment is a ground-truth segment when at least this share of its pixels is object."""

METRICS: dict[str, tuple[str, bool]] = {
    "cosine": ("cosine similarity to the ground truth", True),
    "jaccard": ("Jaccard index of the top segments", True),
    "pointing": ("pointing game hit rate", True),
    **{f"ablation_{m}": (f"accuracy with the top segments hidden ({m} masking)", False) for m in EVALUATION_MASKINGS},
}
"""Metric key → (description, whether higher is better)."""


# --- the metrics -------------------------------------------------------------------------------------------------

def segment_ground_truth(segments: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per segment: its number of object pixels, minus the mean of that count over all segments."""
    counts = np.bincount(segments.ravel(), weights=mask.ravel().astype(np.float64), minlength=int(segments.max()) + 1)
    return counts - counts.mean()


def ground_truth_segments(segments: np.ndarray, mask: np.ndarray, share: float = GROUND_TRUTH_SHARE) -> np.ndarray:
    """Per segment: whether at least ``share`` of its pixels are object pixels (bool)."""
    inside = np.bincount(segments.ravel(), weights=mask.ravel().astype(np.float64), minlength=int(segments.max()) + 1)
    return inside >= share * np.bincount(segments.ravel(), minlength=len(inside))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """``a·b / (|a| |b|)``; 0 when either vector is all zeros."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms > 0 else 0.0


def top_segments(weights: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` segments of largest weight (ties: lower index first)."""
    return np.argsort(-weights, kind="stable")[:count]


def jaccard_index(selected: np.ndarray, truth: np.ndarray) -> float:
    """|selected ∩ truth| / |selected ∪ truth| for segment indices ``selected`` and the per-segment bools ``truth``."""
    chosen, true = set(selected.tolist()), set(np.flatnonzero(truth).tolist())
    union = chosen | true
    return len(chosen & true) / len(union) if union else 0.0


def pointing_hit(weights: np.ndarray, truth: np.ndarray) -> bool:
    """Whether the segment of largest weight is a ground-truth segment."""
    return bool(truth[int(np.argmax(weights))])


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> Interval:
    """The mean of ``values`` and the percentile bootstrap interval of the mean at ``level``."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(values.mean()), float(low), float(high))


# --- the experiment ----------------------------------------------------------------------------------------------

def _rows_seed(seed: int, composite: int, segmentation: int) -> int:
    return int(np.random.SeedSequence([seed, composite, segmentation]).generate_state(1)[0])


def score_composite(model: LoadedModel, composite: Composite, index: int,
                    settings: EvaluationSettings) -> tuple[dict[tuple[str, str, str], float], dict[str, int]]:
    """Every metric for every (segmentation, strategy) on one composite, keyed (metric, segmentation, strategy),
    and the segment count of each segmentation."""
    plans, truths = [], []
    for number, (method, params) in enumerate(SEGMENTATIONS.values()):
        segments = segment(composite.image, method, params)
        rows = sample_perturbations(settings.lime_samples, int(segments.max()) + 1, settings.keep_probability,
                                    _rows_seed(settings.seed, index, number))
        truths.append(ground_truth_segments(segments, composite.mask))
        plans += [plan_explanation(model, composite.photo, masking=strategy, segmentation=segments,
                                   labels=[composite.label], perturbations=rows, batch_size=settings.batch_size)
                  for strategy in strategies()]
    explanations = explain_many(model, plans, settings.batch_size)
    keys = [(name, strategy) for name in SEGMENTATIONS for strategy in strategies()]
    scores: dict[tuple[str, str, str], float] = {}
    hidden = []
    for (name, strategy), plan, explanation in zip(keys, plans, explanations):
        weights = explanation.explanations[composite.label].weights
        truth = truths[list(SEGMENTATIONS).index(name)]
        top = top_segments(weights, settings.top_segments)
        truth_vector = segment_ground_truth(plan.segments, composite.mask)
        scores["cosine", name, strategy] = cosine_similarity(weights, truth_vector)
        scores["jaccard", name, strategy] = jaccard_index(top, truth)
        scores["pointing", name, strategy] = float(pointing_hit(weights, truth))
        hidden.append(~np.isin(plan.segments, top))
    tensor = composite.tensor(model.preprocessing)
    jobs = [ScoringJob(tensor, masking, masks=np.stack(hidden).astype(np.uint8)) for masking in EVALUATION_MASKINGS]
    for masking, probabilities in zip(EVALUATION_MASKINGS, score_jobs(model, jobs, settings.batch_size)):
        for key, row in zip(keys, probabilities):
            scores[(f"ablation_{masking}", *key)] = float(int(np.argmax(row)) in composite.classes)
    return scores, {name: len(truth) for name, truth in zip(SEGMENTATIONS, truths)}


Scores = dict[tuple[str, str, str], float]


def _load_checkpoint(path: Path) -> tuple[Scores, dict[str, int]] | None:
    try:
        data = json.loads(path.read_text())
        return {(m, n, s): float(v) for m, n, s, v in data["scores"]}, {k: int(v) for k, v in data["segments"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_checkpoint(path: Path, scores: Scores, segment_count: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"scores": [[*key, value] for key, value in scores.items()],
                                     "segments": segment_count}))
    temporary.replace(path)


def run(model: LoadedModel, settings: EvaluationSettings, output: Path,
        progress: Callable[[str], None] | None = None) -> Section:
    """Experiment 3 on ``model``: tables and a bar plot of every metric per strategy and segmentation."""
    started = time.perf_counter()
    built = composites_for(model, settings, progress)
    checkpoints = output / ".cache" / f"localisation-{settings.digest(model.name, 'localisation-composite')}"
    per_composite, counts = [], []
    for index, composite in enumerate(built.composites):
        checkpoint = checkpoints / f"composite-{index}.json"
        stored = _load_checkpoint(checkpoint)
        if stored is None:
            stored = score_composite(model, composite, index, settings)
            _store_checkpoint(checkpoint, *stored)
        scores, segment_count = stored
        per_composite.append(scores)
        counts.append(segment_count)
        if progress is not None:
            progress(f"localisation: composite {index + 1} of {len(built.composites)} "
                     f"({time.perf_counter() - started:.0f} s)")
    segment_counts = {name: float(np.mean([count[name] for count in counts])) for name in SEGMENTATIONS}
    def interval(metric: str, name: str, strategy: str) -> Interval:
        values = np.array([scores[metric, name, strategy] for scores in per_composite])
        return bootstrap_interval(values, settings.bootstrap_resamples, settings.seed)

    results = {metric: {name: {strategy: interval(metric, name, strategy) for strategy in strategies()}
                        for name in SEGMENTATIONS} for metric in METRICS}
    output.mkdir(parents=True, exist_ok=True)
    figures = _plot(results, output, settings.top_segments)
    seconds = time.perf_counter() - started
    summary = {
        "composites": len(built.composites), "tried": built.tried, "kept_per_object": built.kept,
        "tried_per_object": built.attempts, "lime_samples": settings.lime_samples,
        "keep_probability": settings.keep_probability, "top_segments": settings.top_segments,
        "bootstrap_resamples": settings.bootstrap_resamples, "mean_segments": segment_counts,
        "metrics": {metric: {name: {s: interval.to_dict() for s, interval in by_strategy.items()}
                             for name, by_strategy in by_name.items()} for metric, by_name in results.items()},
        "seconds": seconds,
    }
    markdown = _markdown(results, settings, built.tried, len(built.composites), segment_counts, seconds)
    return Section("LIME localisation with ground truth", markdown, figures, summary)


_AXIS_LABELS = {"cosine": "cosine similarity", "jaccard": "Jaccard index", "pointing": "hit rate",
                "ablation_layer": "accuracy", "ablation_grey": "accuracy"}
_FIGURES = {"localisation_agreement.png": ("cosine", "jaccard", "pointing"),
            "localisation_ablation.png": ("ablation_layer", "ablation_grey")}


def _plot(results: Mapping[str, Mapping[str, Mapping[str, Interval]]], output: Path, top: int) -> list[Path]:
    """One bar chart per metric (groups: segmentations; bars: strategies; error bars: the intervals), two figures."""
    paths = []
    groups = list(SEGMENTATIONS)
    for file, metrics in _FIGURES.items():
        figure, axes = new_figure(len(metrics))
        for panel, metric in zip(axes, metrics):
            by_name = results[metric]
            values = {s: [by_name[g][s].mean for g in groups] for s in strategies()}
            errors = {s: ([by_name[g][s].low for g in groups], [by_name[g][s].high for g in groups])
                      for s in strategies()}
            lowest = min(0.0, *(v.low for g in by_name.values() for v in g.values()))
            title = METRICS[metric][0].replace("top segments", f"top {top} segments")
            bar_plot(panel, groups, values, errors=errors, ylabel=_AXIS_LABELS[metric], xlabel="segmentation",
                     title=title, ylim=(lowest, 1.0))
        strategy_legend(figure, strategies())
        paths.append(save_figure(figure, output / file))
    return paths


def _markdown(results: Mapping[str, Mapping[str, Mapping[str, Interval]]], settings: EvaluationSettings, tried: int,
              kept: int, segment_counts: Mapping[str, float], seconds: float) -> str:
    k, share = settings.top_segments, GROUND_TRUTH_SHARE
    lines = [
        f"{kept} composites (kept {kept} of {tried} candidates: those the model classifies as the pasted object), "
        f"LIME with {settings.lime_samples} samples, keep probability {settings.keep_probability}, the default "
        f"kernel width, and the *same* keep-matrix rows for every strategy (one matrix per composite and "
        f"segmentation, seeded from seed {settings.seed}). The explained class is the model's top-1 on the composite. "
        f"Mean segment counts: " + ", ".join(f"{n} {c:.0f}" for n, c in segment_counts.items()) + ".",
        "",
        "- **Cosine similarity**: between the segment weights and the per-segment ground truth *g*, where *g_s* is "
        "the number of object pixels in segment *s* minus the mean of that number over all segments.",
        f"- **Ground-truth segments**: those with at least {share:.0%} of their pixels inside the pasted region.",
        f"- **Jaccard index**: between the top {k} segments by weight and the ground-truth segments (a "
        f"segmentation with more than {k} ground-truth segments cannot reach 1).",
        "- **Pointing game**: a hit when the single highest-weight segment is a ground-truth segment.",
        f"- **Top-{k} ablation accuracy**: the top {k} segments are hidden and the composite scored again under a "
        "fixed evaluation masking, *layer* or *grey* (whatever strategy produced the weights); a hit when the top-1 "
        "class is still one of the object's classes. Lower is better: the explanation found the evidence.",
        f"- Means over composites with 95 % percentile bootstrap intervals ({settings.bootstrap_resamples} resamples, "
        f"seed {settings.seed}). Bold: the best mean per column.",
        "",
    ]
    for metric, (description, higher) in METRICS.items():
        by_name = results[metric]
        lines += [f"**{description[0].upper()}{description[1:]}** ({'higher' if higher else 'lower'} is better)", "",
                  "| strategy | " + " | ".join(SEGMENTATIONS) + " |", "|---" * (len(SEGMENTATIONS) + 1) + "|"]
        best = {n: (max if higher else min)(v.mean for v in by_name[n].values()) for n in SEGMENTATIONS}
        for strategy in strategies():
            cells = [f"**{by_name[n][strategy]}**" if by_name[n][strategy].mean == best[n]
                     else str(by_name[n][strategy]) for n in SEGMENTATIONS]
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![Agreement of the LIME weights with the pasted object](localisation_agreement.png)", "",
              "![Accuracy with the top segments hidden](localisation_ablation.png)", "", f"Run time: {seconds:.0f} s."]
    return "\n".join(lines)
