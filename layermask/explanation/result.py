"""The result of an explanation (LIME, KernelSHAP, occlusion): segment weights per label, predictions, and how
they were obtained."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

from layermask.explanation.rendering import render_overlay
from layermask.models.preprocessing import Preprocessing

__all__ = ["ClassScore", "Explanation", "LabelExplanation", "View"]

View = Literal["crop", "original"]
"""Where a heatmap is drawn: on the model's input crop, or on the photo as it was given."""


@dataclass(frozen=True)
class ClassScore:
    """A class of the model's output with its probability on the unmasked image."""

    label: int
    name: str
    probability: float


@dataclass(frozen=True)
class LabelExplanation:
    """The attribution of one explained label to the segments.

    ``weights[s]`` is segment ``s``'s attribution; what the other fields are depends on the method:

    - ``lime``: the weighted ridge fit's coefficients, intercept, weighted R² (``score``) and value
      at the all-visible row (``local_prediction``);
    - ``kernel_shap``: the Shapley values, which sum exactly to ``local_prediction − intercept``;
      ``intercept`` is the probability with every segment hidden, ``local_prediction`` with every
      segment visible, ``score`` the weighted R² of the constrained fit;
    - ``occlusion``: each cell's mean drop in probability over the windows hiding it;
      ``intercept`` and ``local_prediction`` are the unmasked probability, ``score`` is 1.0
      (nothing is fitted).
    """

    label: int
    name: str
    weights: np.ndarray
    intercept: float
    score: float
    local_prediction: float


@dataclass
class Explanation:
    """An explanation of one image. ``image`` is the RGB crop the model saw (H×W×3 uint8).

    ``method`` says which method produced it (``lime``, ``kernel_shap`` or ``occlusion``). Every
    method attributes to the segments of ``segments``; occlusion's per-pixel attribution is
    constant on the cells into which the crop is cut by every window edge, so its segments are
    those cells (``segmentation="occlusion"``, ``segmentation_params`` the window and stride) and
    :meth:`heatmap` is the per-pixel attribution. ``num_samples`` is the number of rows scored (for
    occlusion, the windows plus the unmasked image); ``converged`` says whether
    ``num_samples="auto"`` stopped because the weights settled (``None`` for a fixed count).

    ``original`` is the photo as it was given (RGB, H×W×3 uint8) and ``preprocessing`` how the
    crop was made from it; with them, heatmaps and overlays can be drawn on the photo
    (``size="original"``, ``on="original"``). In a notebook an ``Explanation`` displays as its
    overlay (on the photo where it is kept).
    """

    model: str
    image: np.ndarray
    segments: np.ndarray
    explanations: dict[int, LabelExplanation]
    top_predictions: list[ClassScore]
    masking: str
    segmentation: str
    segmentation_params: dict[str, Any]
    seed: int
    num_samples: int
    keep_probability: float
    kernel_width: float
    timings: dict[str, float] = field(default_factory=dict)
    original: np.ndarray | None = field(default=None, repr=False)
    preprocessing: Preprocessing | None = None
    method: str = "lime"
    converged: bool | None = None

    @property
    def labels(self) -> list[int]:
        """The explained labels, in the order they were requested or ranked."""
        return list(self.explanations)

    @property
    def num_segments(self) -> int:
        return int(self.segments.max()) + 1

    def _label(self, label: int | None) -> LabelExplanation:
        key = self.labels[0] if label is None else label
        if key not in self.explanations:
            raise KeyError(f"label {key} was not explained; explained labels: {self.labels}")
        return self.explanations[key]

    @property
    def original_size(self) -> tuple[int, int] | None:
        """(height, width) of the photo as it was given, where it is kept."""
        return None if self.original is None else (int(self.original.shape[0]), int(self.original.shape[1]))

    def segments_on(self, view: View = "crop") -> np.ndarray:
        """The segment label map on the crop, or on the original photo with -1 outside the crop."""
        if view == "crop":
            return self.segments
        if view != "original":
            raise ValueError(f"view must be 'crop' or 'original', got {view!r}")
        if self.original_size is None or self.preprocessing is None:
            raise ValueError("this explanation does not keep the original photo (made without explain()?); "
                             "use the crop view")
        rows, columns = self.preprocessing.crop_indices(self.original_size)
        labels = self.segments[np.maximum(rows, 0)][:, np.maximum(columns, 0)]
        labels[rows < 0] = -1
        labels[:, columns < 0] = -1
        return labels

    def heatmap(self, label: int | None = None, size: View = "crop") -> np.ndarray:
        """Per-pixel weight map (float32): each pixel carries its segment's weight.

        ``size="crop"`` gives the map at the model's input size (H×W of :attr:`image`);
        ``size="original"`` maps it back through the preprocessing (resize, centre crop) onto the
        photo as it was given, each pixel taking the crop pixel its centre lands on; pixels
        outside the crop were not explained and are NaN (not zero weight).
        """
        weights = self._label(label).weights.astype(np.float32)
        if size == "crop":
            return weights[self.segments]
        labels = self.segments_on(size)
        return np.where(labels >= 0, weights[labels], np.float32(np.nan)).astype(np.float32)

    def top_segments(self, label: int | None = None, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` segments with the largest positive-to-negative weights, as ``(segment, weight)``."""
        weights = self._label(label).weights
        order = np.argsort(-weights, kind="stable")[:k]
        return [(int(s), float(weights[s])) for s in order]

    def overlay(self, label: int | None = None, top_k: int = 5, alpha: float = 0.55, on: View = "crop",
                scale: float | None = None) -> Image.Image:
        """The image overlaid with the heatmap (diverging colours, full colour at ``scale``, by
        default the largest weight's magnitude), segment boundaries and the ``top_k`` positive
        segments outlined.

        ``on="crop"`` draws on the model's input crop; ``on="original"`` on the photo as it was
        given, at its resolution, with the region outside the crop greyed out (not explained).
        """
        top = [s for s, w in self.top_segments(label, top_k) if w > 0]
        if on == "crop":
            return render_overlay(self.image, self.heatmap(label), self.segments, top, alpha, scale)
        labels = self.segments_on(on)
        assert self.original is not None and self.preprocessing is not None
        line_width = max(1, round(min(labels.shape) / self.preprocessing.resize_size))
        return render_overlay(self.original, self.heatmap(label, on), labels, top, alpha, scale, line_width)

    def save_png(self, path: str | os.PathLike[str] | BinaryIO, label: int | None = None, top_k: int = 5,
                 alpha: float = 0.55, on: View = "crop") -> None:
        """Write :meth:`overlay` as a PNG file."""
        self.overlay(label, top_k, alpha, on).save(path, format="PNG")

    def _repr_png_(self) -> bytes:
        """The overlay of the first label as PNG bytes (on the photo where it is kept), for notebooks."""
        buffer = io.BytesIO()
        self.save_png(buffer, on="crop" if self.original is None or self.preprocessing is None else "original")
        return buffer.getvalue()

    def __repr__(self) -> str:
        parts = []
        for result in self.explanations.values():
            top = ", ".join(f"{s}: {w:+.3g}" for s, w in self.top_segments(result.label, 3))
            parts.append(f"label {result.label} ({result.name!r}): R² {result.score:.3f}, top segments {top}")
        converged = "" if self.converged is None else f" ({'converged' if self.converged else 'not converged'})"
        return (f"<Explanation of {self.model!r} by {self.method}, {self.masking} masking, {self.num_samples} "
                f"samples{converged}, {self.num_segments} segments; {'; '.join(parts)}>")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of everything except the image pixels."""
        return {
            "model": self.model,
            "method": self.method,
            "masking": self.masking,
            "segmentation": self.segmentation,
            "segmentation_params": self.segmentation_params,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "converged": self.converged,
            "keep_probability": self.keep_probability,
            "kernel_width": self.kernel_width,
            "num_segments": self.num_segments,
            "original_size": None if self.original_size is None else list(self.original_size),
            "segments": self.segments.tolist(),
            "top_predictions": [vars(p) for p in self.top_predictions],
            "explanations": [
                {"label": e.label, "name": e.name, "weights": e.weights.tolist(), "intercept": e.intercept,
                 "score": e.score, "local_prediction": e.local_prediction}
                for e in self.explanations.values()
            ],
            "timings": self.timings,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        text = json.dumps(self.to_dict())
        if path is not None:
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
        return text
