"""The steps every perturbation method shares: the plan, scoring its rows, choosing labels, the result.

A method (LIME, KernelSHAP, occlusion) expresses each perturbation as a row of a binary
keep-matrix over a segment label map of the model's input crop (1 = the segment is visible).
:class:`ExplanationPlan` holds the crop, the label map and the rows; :func:`predict_perturbations`
scores rows through a :data:`~layermask.explanation.scoring.Scorer`, so a serving backend that
scores keep-rows needs nothing method-specific. A method then only differs in how it chooses the
rows and how it turns their scores into one :data:`LabelFit` per label (its ``fit`` step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from layermask.errors import InvalidOptionError
from layermask.explanation.options import ExplainOptions
from layermask.explanation.result import ClassScore, Explanation, LabelExplanation
from layermask.explanation.scoring import Scorer, ScoringJob
from layermask.explanation.segmentation import segment
from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import LoadedModel

__all__ = ["ExplanationPlan", "Fit", "LabelFit", "Progress", "check_perturbations", "choose_labels",
           "default_batch_size", "make_explanation", "predict_perturbations", "segment_crop"]

Progress = Callable[[int, int], None]

LabelFit = tuple[np.ndarray, float, float, float]
"""One label's ``(weights per segment, intercept, score, local prediction)``."""

Fit = Callable[["ExplanationPlan", np.ndarray, np.ndarray], list[LabelFit]]
"""A method's last step: ``(plan, rows, targets) -> one LabelFit per column of targets`` (rows × labels)."""

# Measured on the 2-core CPU machines (docs/benchmarks.md, interleaved in one process): with the
# band-only fill and freed memory kept for reuse, the layer-masked EfficientNet-Lite0 takes 11.1,
# 10.6, 10.3 and 10.3 ms per image at batch 8, 16, 32 and 64. Only the CPU has been measured;
# other devices use the CPU figure until they are.
DEFAULT_BATCH_SIZE = {"cpu": 32}


def default_batch_size(device: torch.device | str = "cpu") -> int:
    return DEFAULT_BATCH_SIZE.get(torch.device(device).type, DEFAULT_BATCH_SIZE["cpu"])


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


def check_perturbations(rows: np.ndarray, num_segments: int) -> np.ndarray:
    """Caller-given keep rows as ``uint8``; ``InvalidOptionError`` unless they are samples × segments of 0s and 1s."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != num_segments:
        raise InvalidOptionError("perturbations", f"must be samples × {num_segments} segments, got shape {rows.shape}")
    if rows.shape[0] < 2 or not np.isin(rows, (0, 1)).all():
        raise InvalidOptionError("perturbations", "must hold at least two rows of 0s and 1s")
    return rows.astype(np.uint8)


@dataclass
class ExplanationPlan:
    """What a run decides before the model runs: the crop, its segments and the keep-matrix
    (and the photo as given, ``original``, for heatmaps drawn on it).

    ``row_weights`` are fixed per-row regression weights where the method sets them (KernelSHAP's
    exact enumeration); ``exact`` says the rows are every coalition; ``adaptive`` that the rows are
    a pre-sampled pool (``num_samples="auto"``) of which only a prefix may be scored.
    """

    model: LoadedModel
    options: ExplainOptions
    pixels: np.ndarray
    tensor: torch.Tensor
    segments: np.ndarray
    rows: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    original: np.ndarray | None = None
    row_weights: np.ndarray | None = None
    exact: bool = False
    adaptive: bool = False

    def job(self, rows: np.ndarray, labels: tuple[int, ...] | None) -> ScoringJob:
        return ScoringJob(self.tensor, self.options.masking, segments=self.segments, rows=rows, labels=labels)

    def unmasked_job(self) -> ScoringJob:
        """The all-visible image, every class: the prediction being explained."""
        return self.job(np.ones((1, self.rows.shape[1]), dtype=np.uint8), None)


def predict_perturbations(scorer: Scorer, plan: ExplanationPlan, labels: Sequence[int], batch_size: int,
                          progress: Progress | None = None, *, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Probabilities of ``labels`` for rows ``start:stop`` of ``plan`` (rows × labels, float64), batch by batch.

    Each batch is one :class:`~layermask.explanation.scoring.ScoringJob` for ``scorer``.
    ``progress(done, total)`` is called after each batch, ``done`` counting from row 0 and
    ``total`` the plan's row count; an exception it raises stops the run there (how callers cancel).
    """
    rows = plan.rows
    stop = len(rows) if stop is None else stop
    out = np.empty((stop - start, len(labels)), dtype=np.float64)
    for first in range(start, stop, batch_size):
        batch = rows[first : min(stop, first + batch_size)]
        out[first - start : first - start + len(batch)] = scorer(plan.job(batch, tuple(labels)))
        if progress is not None:
            progress(first + len(batch), len(rows))
    return out


def choose_labels(plan: ExplanationPlan, probabilities: np.ndarray) -> tuple[list[ClassScore], list[int]]:
    """The top predictions of the unmasked image, and the labels to explain: the explicit ones or the top ones."""
    names = plan.model.class_names
    top_labels = plan.options.top_labels
    order = np.argsort(-probabilities, kind="stable")[: min(max(5, top_labels), len(names))]
    top = [ClassScore(int(i), names[int(i)], float(probabilities[i])) for i in order]
    labels = plan.options.labels
    chosen = list(labels) if labels is not None else [p.label for p in top[:top_labels]]
    return top, chosen


def make_explanation(plan: ExplanationPlan, top_predictions: list[ClassScore], labels: Sequence[int],
                     fits: Sequence[LabelFit], num_samples: int, converged: bool | None) -> Explanation:
    """The :class:`Explanation` of ``plan`` from one fit per label; occlusion's segments are its cells."""
    options = plan.options
    names = plan.model.class_names
    explanations = {label: LabelExplanation(label, names[label], *fit) for label, fit in zip(labels, fits)}
    if options.method == "occlusion":
        segmentation, params = "occlusion", {"window": options.occlusion.window, "stride": options.occlusion.stride}
    else:
        segmentation, params = options.segmentation_method, dict(options.segmentation_params)
    return Explanation(
        model=plan.model.name, image=plan.pixels, segments=plan.segments, explanations=explanations,
        top_predictions=top_predictions, masking=options.masking, segmentation=segmentation,
        segmentation_params=params, seed=options.seed, num_samples=num_samples,
        keep_probability=options.keep_probability, kernel_width=options.kernel_width, timings=plan.timings,
        original=plan.original, preprocessing=plan.model.preprocessing, method=options.method, converged=converged,
    )
