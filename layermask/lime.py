"""Batched LIME with any masking strategy.

The algorithm, step by step (each step is a function below):

1. :func:`segment` the image the model sees (the preprocessed crop);
2. :func:`sample_perturbations`: a binary keep-matrix ``Z`` (samples × segments), each segment
   kept with ``keep_probability``, the first row all ones;
3. :func:`predict_perturbations`: turn rows into pixel masks batch by batch and run the masked
   model, keeping only the probabilities of the explained labels (memory does not grow with the
   number of samples, and for ``layer`` only masks are built per sample, never image copies);
4. :func:`sample_weights`: ``sqrt(exp(-d² / w²))`` with ``d`` the cosine distance of each row to
   the all-ones row;
5. :func:`fit_label`: a weighted ``Ridge(alpha=1)`` per label, as the ``lime`` package does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances

from layermask.explanation import ClassScore, Explanation, LabelExplanation
from layermask.maskers import Masker, cached_masker
from layermask.models import LoadedModel
from layermask.preprocessing import ImageLike
from layermask.segmentation import DEFAULT_MAX_SEGMENTS, segment, segmentation_parameters

Progress = Callable[[int, int], None]

# Measured with bench/lime.py --batch-sweep on the 2-core CPU machines (docs/benchmarks.md): the
# layer-masked EfficientNet-Lite0 is fastest per image around batch 8; from 16 up the per-image
# time grows. Only the CPU has been measured; other devices use the CPU figure until they are.
DEFAULT_BATCH_SIZE = {"cpu": 8}


def sample_perturbations(num_samples: int, num_segments: int, keep_probability: float, seed: int) -> np.ndarray:
    """Binary keep-matrix (``uint8``, samples × segments); row 0 keeps everything."""
    rng = np.random.default_rng(seed)
    rows = (rng.random((num_samples, num_segments)) < keep_probability).astype(np.uint8)
    rows[0] = 1
    return rows


def rows_to_masks(rows: np.ndarray, segments: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel masks (B×1×H×W, 1 = visible) for keep-matrix rows over a segment label map."""
    return torch.from_numpy(rows).to(dtype)[:, segments].unsqueeze(1)


def predict_perturbations(masker: Masker, image: torch.Tensor, segments: np.ndarray, rows: np.ndarray,
                          labels: Sequence[int], batch_size: int, progress: Progress | None = None) -> np.ndarray:
    """Probabilities of ``labels`` for every row (samples × labels, float64), batch by batch.

    ``progress(done, total)`` is called after each batch; an exception it raises stops the run
    there (how callers cancel).
    """
    label_index = torch.tensor(list(labels))
    segment_map = torch.from_numpy(segments).long()
    out = np.empty((len(rows), len(labels)), dtype=np.float64)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        logits = masker(image, rows_to_masks(batch, segment_map, image.dtype))
        out[start : start + len(batch)] = logits.softmax(dim=-1)[:, label_index].double().numpy()
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
) -> Explanation:
    """Explain ``model``'s prediction on ``image`` with LIME under the ``masking`` strategy.

    ``segmentation`` is a method name (``quickshift``, ``slic``, ``felzenszwalb``, ``grid``) with
    optional ``segmentation_params``, or an integer label map at the model's input size.
    ``labels`` explicitly, or else the ``top_labels`` classes of the unmasked prediction, are
    explained. ``perturbations`` replaces the sampled keep-matrix (so that two strategies can be
    compared on identical rows; ``num_samples`` and ``keep_probability`` are then ignored).
    ``batch_size=None`` uses :data:`DEFAULT_BATCH_SIZE`. Bad arguments raise ``ValueError``.
    """
    _check_arguments(num_samples, keep_probability, kernel_width, top_labels, seed, batch_size,
                     model.num_classes, labels)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    crop = model.preprocessing.crop(image)
    pixels = np.asarray(crop)
    if isinstance(segmentation, np.ndarray):
        segments, method, params = segment(pixels, segmentation, None, max_segments), "label_map", {}
    else:
        params = segmentation_parameters(segmentation, segmentation_params)
        segments, method = segment(pixels, segmentation, params, max_segments), segmentation
    timings["segmentation"] = time.perf_counter() - started

    started = time.perf_counter()
    masker = cached_masker(masking, model)
    tensor = model.preprocessing.normalise(crop).unsqueeze(0)
    full = torch.ones(1, 1, *tensor.shape[2:], dtype=tensor.dtype)
    probabilities = masker(tensor, full).softmax(dim=-1)[0]
    top = probabilities.topk(min(max(5, top_labels), model.num_classes))
    top_predictions = [ClassScore(int(i), model.class_names[int(i)], float(p))
                       for p, i in zip(top.values.tolist(), top.indices.tolist())]
    chosen = [int(label) for label in labels] if labels is not None else [p.label for p in top_predictions[:top_labels]]
    if perturbations is None:
        rows = sample_perturbations(num_samples, int(segments.max()) + 1, keep_probability, seed)
    else:
        rows = _check_perturbations(perturbations, int(segments.max()) + 1)
    targets = predict_perturbations(masker, tensor, segments, rows, chosen, batch_size or default_batch_size(),
                                    progress)
    timings["inference"] = time.perf_counter() - started

    started = time.perf_counter()
    weights = sample_weights(rows, kernel_width)
    explanations = {}
    for column, label in enumerate(chosen):
        coefficients, intercept, score, local = fit_label(rows, targets[:, column], weights)
        explanations[label] = LabelExplanation(label, model.class_names[label], coefficients, intercept, score, local)
    timings["fit"] = time.perf_counter() - started

    return Explanation(
        model=model.name, image=pixels, segments=segments, explanations=explanations,
        top_predictions=top_predictions, masking=masking, segmentation=method,
        segmentation_params=params, seed=seed, num_samples=len(rows), keep_probability=keep_probability,
        kernel_width=kernel_width, timings=timings,
    )
