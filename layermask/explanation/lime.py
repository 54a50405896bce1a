"""Batched LIME with any masking strategy.

The options of a run are an :class:`~layermask.explanation.options.ExplainOptions`, checked when
it is made; :func:`plan_explanation` checks them against the model and the image. Then the
algorithm, step by step (each step is a function below):

1. :func:`segment_crop`: segment the image the model sees (the preprocessed crop);
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances

from layermask import allocator
from layermask.errors import InvalidOptionError
from layermask.explanation.options import ExplainOptions
from layermask.explanation.result import ClassScore, Explanation, LabelExplanation
from layermask.explanation.scoring import LocalScorer, Scorer, ScoringJob, rows_to_masks, score_jobs
from layermask.explanation.segmentation import segment
from layermask.models.preprocessing import ImageLike, Preprocessing, to_rgb_image
from layermask.models.registry import LoadedModel

__all__ = ["explain", "explain_many", "finish_explanation", "plan_explanation", "rows_to_masks", "sample_perturbations"]

Progress = Callable[[int, int], None]

# Measured on the 2-core CPU machines (docs/benchmarks.md, interleaved in one process): with the
# band-only fill and freed memory kept for reuse, the layer-masked EfficientNet-Lite0 takes 11.1,
# 10.6, 10.3 and 10.3 ms per image at batch 8, 16, 32 and 64. Only the CPU has been measured;
# other devices use the CPU figure until they are.
DEFAULT_BATCH_SIZE = {"cpu": 32}


def segment_crop(pixels: np.ndarray, image_size: tuple[int, int], preprocessing: Preprocessing,
                 options: ExplainOptions) -> np.ndarray:
    """The segments of the crop ``pixels`` (H×W×3 uint8) as ``options`` ask.

    A label map is used as it is at the crop's size; one at ``image_size``, the original image's
    (height, width), is resized and cropped like the image.
    """
    segmentation = options.segmentation
    if isinstance(segmentation, np.ndarray) and segmentation.shape != pixels.shape[:2]:
        if segmentation.shape != image_size:
            raise InvalidOptionError("segmentation", f"shape {segmentation.shape} matches neither the image "
                                                     f"{image_size} nor the model's input size {pixels.shape[:2]}")
        segmentation = preprocessing.crop_label_map(segmentation)
    return segment(pixels, segmentation, options.segmentation_params, options.max_segments)


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


def _check_perturbations(rows: np.ndarray, num_segments: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != num_segments:
        raise InvalidOptionError("perturbations", f"must be samples × {num_segments} segments, got shape {rows.shape}")
    if rows.shape[0] < 2 or not np.isin(rows, (0, 1)).all():
        raise InvalidOptionError("perturbations", "must hold at least two rows of 0s and 1s")
    return rows.astype(np.uint8)


@dataclass
class ExplanationPlan:
    """What a LIME run decides before the model runs: the crop, its segments and the keep-matrix
    (and the photo as given, ``original``, for heatmaps drawn on it)."""

    model: LoadedModel
    options: ExplainOptions
    pixels: np.ndarray
    tensor: torch.Tensor
    segments: np.ndarray
    rows: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    original: np.ndarray | None = None

    def job(self, rows: np.ndarray, labels: tuple[int, ...] | None) -> ScoringJob:
        return ScoringJob(self.tensor, self.options.masking, segments=self.segments, rows=rows, labels=labels)

    def unmasked_job(self) -> ScoringJob:
        """The all-visible image, every class: the prediction being explained."""
        return self.job(np.ones((1, self.rows.shape[1]), dtype=np.uint8), None)


def plan_explanation(model: LoadedModel, image: ImageLike, options: ExplainOptions | None = None, *,
                     perturbations: np.ndarray | None = None, **overrides: Any) -> ExplanationPlan:
    """Check ``options`` against ``model`` and ``image``, crop and segment the image and sample the keep-matrix.

    ``overrides`` replace fields of ``options`` (or of the defaults). Bad options, a segmentation
    unfit for the image and bad ``perturbations`` raise :class:`~layermask.errors.InvalidOptionError`
    naming the option; this is the last step that checks anything.
    """
    options = (options or ExplainOptions()).replace(**overrides)
    options.check_model(model)
    started = time.perf_counter()
    rgb = to_rgb_image(image)
    crop = model.preprocessing.crop(rgb)
    pixels = np.asarray(crop)
    segments = segment_crop(pixels, (rgb.height, rgb.width), model.preprocessing, options)
    timings = {"segmentation": time.perf_counter() - started}
    num_segments = int(segments.max()) + 1
    if perturbations is None:
        rows = sample_perturbations(options.sample_budget, num_segments, options.keep_probability, options.seed)
    else:
        rows = _check_perturbations(perturbations, num_segments)
    tensor = model.preprocessing.normalise(crop).unsqueeze(0)
    return ExplanationPlan(model, options, pixels, tensor, segments, rows, timings, original=np.asarray(rgb))


def choose_labels(plan: ExplanationPlan, probabilities: np.ndarray) -> tuple[list[ClassScore], list[int]]:
    """The top predictions of the unmasked image, and the labels to explain: the explicit ones or the top ones."""
    names = plan.model.class_names
    top_labels = plan.options.top_labels
    order = np.argsort(-probabilities, kind="stable")[: min(max(5, top_labels), len(names))]
    top = [ClassScore(int(i), names[int(i)], float(probabilities[i])) for i in order]
    labels = plan.options.labels
    chosen = list(labels) if labels is not None else [p.label for p in top[:top_labels]]
    return top, chosen


def fit_explanation(plan: ExplanationPlan, top_predictions: list[ClassScore], labels: Sequence[int],
                    targets: np.ndarray) -> Explanation:
    """Weigh the rows and fit one ridge regression per label to ``targets`` (samples × labels)."""
    started = time.perf_counter()
    options = plan.options
    weights = sample_weights(plan.rows, options.kernel_width)
    explanations = {}
    for column, label in enumerate(labels):
        coefficients, intercept, score, local = fit_label(plan.rows, targets[:, column], weights)
        explanations[label] = LabelExplanation(label, plan.model.class_names[label], coefficients, intercept, score,
                                               local)
    plan.timings["fit"] = time.perf_counter() - started
    return Explanation(
        model=plan.model.name, image=plan.pixels, segments=plan.segments, explanations=explanations,
        top_predictions=top_predictions, masking=options.masking, segmentation=options.segmentation_method,
        segmentation_params=dict(options.segmentation_params), seed=options.seed, num_samples=len(plan.rows),
        keep_probability=options.keep_probability, kernel_width=options.kernel_width, timings=plan.timings,
        original=plan.original, preprocessing=plan.model.preprocessing,
    )


def finish_explanation(plan: ExplanationPlan, scorer: Scorer | None = None,
                       progress: Progress | None = None, *, keep_freed_memory: bool | None = None) -> Explanation:
    """Score the rows of ``plan`` with ``scorer`` (by default in this process) and fit the explanation.

    The allocator is switched as by :func:`explain` (``keep_freed_memory`` likewise). Nothing here
    checks input: an exception raised here is a failure of the computation.
    """
    allocator.keep_freed_memory_by_default(keep_freed_memory)
    batch_size = plan.options.batch_size or default_batch_size()
    scorer = scorer or LocalScorer(plan.model, batch_size)
    started = time.perf_counter()
    top_predictions, chosen = choose_labels(plan, scorer(plan.unmasked_job())[0])
    targets = predict_perturbations(scorer, plan, chosen, batch_size, progress)
    plan.timings["inference"] = time.perf_counter() - started
    return fit_explanation(plan, top_predictions, chosen, targets)


def explain(model: LoadedModel, image: ImageLike, options: ExplainOptions | None = None, *,
            progress: Progress | None = None, scorer: Scorer | None = None,
            perturbations: np.ndarray | None = None, keep_freed_memory: bool | None = None,
            **overrides: Any) -> Explanation:
    """Explain ``model``'s prediction on ``image`` with LIME.

    ``options`` (an :class:`~layermask.explanation.options.ExplainOptions`) says how; keyword
    ``overrides`` replace its fields, so ``explain(model, image, masking="grey", num_samples=500)``
    works without one. ``perturbations`` replaces the sampled keep-matrix (so that two strategies
    can be compared on identical rows; ``num_samples``, ``keep_probability`` and ``seed`` are then
    unused). ``progress(done, total)`` is called after each batch; an exception it raises stops the
    run. ``scorer`` computes the probabilities of each batch (by default
    :class:`~layermask.explanation.scoring.LocalScorer` on ``model``; only ``model``'s preprocessing
    and class names are used otherwise).

    Process-wide effect: the first explanation in a process switches glibc's allocator to keep
    freed memory for reuse (:func:`layermask.allocator.keep_freed_memory`: one malloc arena, no
    ``mmap``, no trimming), which spares every forward pass the page faults of its activation
    buffers; the process's resident size then stays at its peak. ``keep_freed_memory=False`` on
    the first call, or ``LAYERMASK_KEEP_FREED_MEMORY=0`` in the environment, leaves the allocator
    alone for the rest of the process; ``True`` switches it on whatever the environment says.

    Raises:
        InvalidOptionError: (a ``ValueError``) an option is invalid for ``model`` or ``image``;
            ``field`` names it. Raised before the model runs.
        TypeError: an override that is not a field of ``ExplainOptions``.
    """
    plan = plan_explanation(model, image, options, perturbations=perturbations, **overrides)
    return finish_explanation(plan, scorer, progress, keep_freed_memory=keep_freed_memory)


def explain_many(model: LoadedModel, plans: Sequence[ExplanationPlan], max_rows: int,
                 on_forward: Callable[[int], None] | None = None, *,
                 keep_freed_memory: bool | None = None) -> list[Explanation]:
    """Finish several planned explanations of ``model`` at once, their rows sharing forward passes.

    Each plan keeps its own image, strategy, rows and labels; the result for a plan is the one
    :func:`explain` gives for it, up to the rounding of different pass sizes. The allocator is
    switched as by :func:`explain` (``keep_freed_memory`` likewise).
    """
    allocator.keep_freed_memory_by_default(keep_freed_memory)
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
