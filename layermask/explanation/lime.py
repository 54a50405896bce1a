"""Batched LIME with any masking strategy.

The algorithm, step by step (each step is a function below):

1. :func:`segment` the image the model sees (the preprocessed crop);
2. :func:`sample_perturbations`: a binary keep-matrix ``Z`` (samples × segments), each segment
   kept with ``keep_probability``, the first row all ones;
3. :func:`predict_perturbations`: score the rows batch by batch through a
   :data:`~layermask.explanation.scoring.Scorer`, which turns rows into pixel masks and runs the masked model,
   keeping only the probabilities of the explained labels (memory does not grow with the number
   of samples, and for ``layer`` only masks are built per sample, never image copies);
4. :func:`sample_weights`: ``sqrt(exp(-d² / w²))`` with ``d`` the cosine distance of each row to
   the all-ones row;
5. :func:`fit_label`: a weighted ``Ridge(alpha=1)`` per label, as the ``lime`` package does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances

from layermask.explanation.result import ClassScore, Explanation, LabelExplanation
from layermask.explanation.scoring import LocalScorer, Scorer, ScoringJob, rows_to_masks, score_jobs
from layermask.explanation.segmentation import DEFAULT_MAX_SEGMENTS, segment, segmentation_parameters
from layermask.masking.names import MASKING_STRATEGIES
from layermask.models.preprocessing import ImageLike
from layermask.models.registry import LoadedModel

__all__ = ["explain", "explain_many", "plan_explanation", "rows_to_masks", "sample_perturbations"]

Progress = Callable[[int, int], None]

# Measured on the 2-core CPU machines (docs/benchmarks.md, interleaved in one process): with the
# band-only fill and freed memory kept for reuse, the layer-masked EfficientNet-Lite0 takes 11.1,
# 10.6, 10.3 and 10.3 ms per image at batch 8, 16, 32 and 64. Only the CPU has been measured;
# other devices use the CPU figure until they are.
DEFAULT_BATCH_SIZE = {"cpu": 32}


def sample_perturbations(num_samples: int, num_segments: int, keep_probability: float, seed: int) -> np.ndarray:
    """Binary keep-matrix (``uint8``, samples × segments); row 0 keeps everything."""
    rng = np.random.default_rng(seed)
    rows = (rng.random((num_samples, num_segments)) < keep_probability).astype(np.uint8)
    rows[0] = 1
    return rows


def predict_perturbations(scorer: Scorer, plan: ExplanationPlan, labels: Sequence[int], batch_size: int,
                          progress: Progress | None = None) -> np.ndarray:
    """Probabilities of ``labels`` for every row of ``plan`` (samples × labels, float64), batch by batch.

    Each batch is one :class:`~layermask.explanation.scoring.ScoringJob` for ``scorer``. ``progress(done,
    total)`` is called after each batch; an exception it raises stops the run there (how callers
    cancel).
    """
    rows = plan.rows
    out = np.empty((len(rows), len(labels)), dtype=np.float64)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        out[start : start + len(batch)] = scorer(plan.job(batch, tuple(labels)))
        if progress is not None:
            progress(start + len(batch), len(rows))
    return out


def sample_weights(rows: np.ndarray, kernel_width: float) -> np.ndarray:
    """LIME's exponential kernel on the cosine distance of each row to the all-ones row."""
    distances = pairwise_distances(rows, np.ones((1, rows.shape[1])), metric="cosine").ravel()
    return np.sqrt(np.exp(-(distances**2) / kernel_width**2))


def fit_label(rows: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """Weighted ridge fit: ``(coefficients, intercept, weighted R², prediction at the all-ones row)``."""
    regression = Ridge(alpha=1.0, fit_intercept=True)
    regression.fit(rows, targets, sample_weight=weights)
    score = float(regression.score(rows, targets, sample_weight=weights))
    local = float(regression.predict(np.ones((1, rows.shape[1])))[0])
    return regression.coef_.astype(np.float64), float(regression.intercept_), score, local


def default_batch_size(device: torch.device | str = "cpu") -> int:
    return DEFAULT_BATCH_SIZE.get(torch.device(device).type, DEFAULT_BATCH_SIZE["cpu"])


def _check_arguments(num_samples: int, keep_probability: float, kernel_width: float, top_labels: int,
                     seed: int, batch_size: int | None, num_classes: int, labels: Sequence[int] | None) -> None:
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer of at least 2, got {num_samples!r}")
    if not 0.0 < keep_probability <= 1.0:
        raise ValueError(f"keep_probability must be in (0, 1], got {keep_probability!r}")
    if not kernel_width > 0 or not np.isfinite(kernel_width):
        raise ValueError(f"kernel_width must be positive, got {kernel_width!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if labels is not None:
        if len(labels) == 0:
            raise ValueError("labels must not be empty")
        bad = [label for label in labels if not 0 <= int(label) < num_classes]
        if bad:
            raise ValueError(f"labels {bad} are out of range for a model with {num_classes} classes")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {list(labels)}")
    elif not 1 <= top_labels <= num_classes:
        raise ValueError(f"top_labels must be between 1 and {num_classes}, got {top_labels!r}")


def _check_perturbations(rows: np.ndarray, num_segments: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != num_segments:
        raise ValueError(f"perturbations must be samples × {num_segments} segments, got shape {rows.shape}")
    if rows.shape[0] < 2 or not np.isin(rows, (0, 1)).all():
        raise ValueError("perturbations must hold at least two rows of 0s and 1s")
    return rows.astype(np.uint8)


def _check_masking(masking: str) -> None:
    if masking not in MASKING_STRATEGIES:
        raise ValueError(f"unknown masking strategy {masking!r}; choose one of {', '.join(MASKING_STRATEGIES)}")


@dataclass
class ExplanationPlan:
    """What a LIME run decides before the model runs: the crop, its segments and the keep-matrix."""

    model: LoadedModel
    masking: str
    pixels: np.ndarray
    tensor: torch.Tensor
    segments: np.ndarray
    segmentation: str
    segmentation_params: dict[str, Any]
    rows: np.ndarray
    seed: int
    keep_probability: float
    kernel_width: float
    labels: list[int] | None
    top_labels: int
    timings: dict[str, float] = field(default_factory=dict)

    def job(self, rows: np.ndarray, labels: tuple[int, ...] | None) -> ScoringJob:
        return ScoringJob(self.tensor, self.masking, segments=self.segments, rows=rows, labels=labels)

    def unmasked_job(self) -> ScoringJob:
        """The all-visible image, every class: the prediction being explained."""
        return self.job(np.ones((1, self.rows.shape[1]), dtype=np.uint8), None)


def plan_explanation(
    model: LoadedModel,
    image: ImageLike,
    *,
    masking: str = "layer",
    segmentation: str | np.ndarray = "quickshift",
    segmentation_params: Mapping[str, Any] | None = None,
    num_samples: int = 1000,
    keep_probability: float = 0.5,
    kernel_width: float = 0.25,
    labels: Sequence[int] | None = None,
    top_labels: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    perturbations: np.ndarray | None = None,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
) -> ExplanationPlan:
    """Check the arguments (``ValueError``), crop and segment the image and sample the keep-matrix.

    The arguments are :func:`explain`'s.
    """
    _check_arguments(num_samples, keep_probability, kernel_width, top_labels, seed, batch_size,
                     model.num_classes, labels)
    _check_masking(masking)
    started = time.perf_counter()
    crop = model.preprocessing.crop(image)
    pixels = np.asarray(crop)
    if isinstance(segmentation, np.ndarray):
        segments, method, params = segment(pixels, segmentation, None, max_segments), "label_map", {}
    else:
        params = segmentation_parameters(segmentation, segmentation_params)
        segments, method = segment(pixels, segmentation, params, max_segments), segmentation
    timings = {"segmentation": time.perf_counter() - started}
    if perturbations is None:
        rows = sample_perturbations(num_samples, int(segments.max()) + 1, keep_probability, seed)
    else:
        rows = _check_perturbations(perturbations, int(segments.max()) + 1)
    tensor = model.preprocessing.normalise(crop).unsqueeze(0)
    return ExplanationPlan(model, masking, pixels, tensor, segments, method, params, rows, seed, keep_probability,
                           kernel_width, None if labels is None else [int(label) for label in labels], top_labels,
                           timings)


def choose_labels(plan: ExplanationPlan, probabilities: np.ndarray) -> tuple[list[ClassScore], list[int]]:
    """The top predictions of the unmasked image, and the labels to explain: the explicit ones or the top ones."""
    names = plan.model.class_names
    order = np.argsort(-probabilities, kind="stable")[: min(max(5, plan.top_labels), len(names))]
    top = [ClassScore(int(i), names[int(i)], float(probabilities[i])) for i in order]
    chosen = plan.labels if plan.labels is not None else [p.label for p in top[: plan.top_labels]]
    return top, chosen


def fit_explanation(plan: ExplanationPlan, top_predictions: list[ClassScore], labels: Sequence[int],
                    targets: np.ndarray) -> Explanation:
    """Weigh the rows and fit one ridge regression per label to ``targets`` (samples × labels)."""
    started = time.perf_counter()
    weights = sample_weights(plan.rows, plan.kernel_width)
    explanations = {}
    for column, label in enumerate(labels):
        coefficients, intercept, score, local = fit_label(plan.rows, targets[:, column], weights)
        explanations[label] = LabelExplanation(label, plan.model.class_names[label], coefficients, intercept, score,
                                               local)
    plan.timings["fit"] = time.perf_counter() - started
    return Explanation(
        model=plan.model.name, image=plan.pixels, segments=plan.segments, explanations=explanations,
        top_predictions=top_predictions, masking=plan.masking, segmentation=plan.segmentation,
        segmentation_params=plan.segmentation_params, seed=plan.seed, num_samples=len(plan.rows),
        keep_probability=plan.keep_probability, kernel_width=plan.kernel_width, timings=plan.timings,
    )


def explain(
    model: LoadedModel,
    image: ImageLike,
    *,
    masking: str = "layer",
    segmentation: str | np.ndarray = "quickshift",
    segmentation_params: Mapping[str, Any] | None = None,
    num_samples: int = 1000,
    keep_probability: float = 0.5,
    kernel_width: float = 0.25,
    labels: Sequence[int] | None = None,
    top_labels: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
    perturbations: np.ndarray | None = None,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    scorer: Scorer | None = None,
) -> Explanation:
    """Explain ``model``'s prediction on ``image`` with LIME under the ``masking`` strategy.

    ``segmentation`` is a method name (``quickshift``, ``slic``, ``felzenszwalb``, ``grid``) with
    optional ``segmentation_params``, or an integer label map at the model's input size.
    ``labels`` explicitly, or else the ``top_labels`` classes of the unmasked prediction, are
    explained. ``perturbations`` replaces the sampled keep-matrix (so that two strategies can be
    compared on identical rows; ``num_samples`` and ``keep_probability`` are then ignored).
    ``batch_size=None`` uses :data:`DEFAULT_BATCH_SIZE`. ``scorer`` computes the probabilities of
    each batch (by default :class:`~layermask.explanation.scoring.LocalScorer` on ``model``; only ``model``'s
    preprocessing and class names are used otherwise). Bad arguments raise ``ValueError``.
    """
    plan = plan_explanation(
        model, image, masking=masking, segmentation=segmentation, segmentation_params=segmentation_params,
        num_samples=num_samples, keep_probability=keep_probability, kernel_width=kernel_width, labels=labels,
        top_labels=top_labels, seed=seed, batch_size=batch_size, perturbations=perturbations,
        max_segments=max_segments,
    )
    batch_size = batch_size or default_batch_size()
    scorer = scorer or LocalScorer(model, batch_size)
    started = time.perf_counter()
    top_predictions, chosen = choose_labels(plan, scorer(plan.unmasked_job())[0])
    targets = predict_perturbations(scorer, plan, chosen, batch_size, progress)
    plan.timings["inference"] = time.perf_counter() - started
    return fit_explanation(plan, top_predictions, chosen, targets)


def explain_many(model: LoadedModel, plans: Sequence[ExplanationPlan], max_rows: int,
                 on_forward: Callable[[int], None] | None = None) -> list[Explanation]:
    """Finish several planned explanations of ``model`` at once, their rows sharing forward passes.

    Each plan keeps its own image, strategy, rows and labels; the result for a plan is the one
    :func:`explain` gives for it, up to the rounding of different pass sizes.
    """
    started = time.perf_counter()
    unmasked = score_jobs(model, [plan.unmasked_job() for plan in plans], max_rows, on_forward)
    choices = [choose_labels(plan, probabilities[0]) for plan, probabilities in zip(plans, unmasked)]
    jobs = [plan.job(plan.rows, tuple(chosen)) for plan, (_, chosen) in zip(plans, choices)]
    targets = score_jobs(model, jobs, max_rows, on_forward)
    elapsed = time.perf_counter() - started
    explanations = []
    for plan, (top, chosen), plan_targets in zip(plans, choices, targets):
        plan.timings["inference"] = elapsed
        explanations.append(fit_explanation(plan, top, chosen, plan_targets))
    return explanations
