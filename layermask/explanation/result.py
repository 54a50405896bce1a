"""The result of a LIME run: segment weights per label, predictions, and how they were obtained."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from layermask.explanation.rendering import render_overlay

__all__ = ["ClassScore", "Explanation", "LabelExplanation"]


@dataclass(frozen=True)
class ClassScore:
    """A class of the model's output with its probability on the unmasked image."""

    label: int
    name: str
    probability: float


@dataclass(frozen=True)
class LabelExplanation:
    """The weighted ridge fit for one explained label.

    ``weights[s]`` is segment ``s``'s coefficient; ``score`` the fit's weighted R² and
    ``local_prediction`` the fit evaluated at the all-visible row.
    """

    label: int
    name: str
    weights: np.ndarray
    intercept: float
    score: float
    local_prediction: float


@dataclass
class Explanation:
    """A LIME explanation of one image. ``image`` is the RGB crop the model saw (H×W×3 uint8)."""

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

    def heatmap(self, label: int | None = None) -> np.ndarray:
        """Per-pixel weight map (H×W float32): each pixel carries its segment's weight."""
        return self._label(label).weights.astype(np.float32)[self.segments]

    def top_segments(self, label: int | None = None, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` segments with the largest positive-to-negative weights, as ``(segment, weight)``."""
        weights = self._label(label).weights
        order = np.argsort(-weights, kind="stable")[:k]
        return [(int(s), float(weights[s])) for s in order]

    def overlay(self, label: int | None = None, top_k: int = 5, alpha: float = 0.55) -> Image.Image:
        """The image overlaid with the heatmap (diverging colours), segment boundaries and the
        ``top_k`` positive segments outlined."""
        top = [s for s, w in self.top_segments(label, top_k) if w > 0]
        return render_overlay(self.image, self.heatmap(label), self.segments, top, alpha)

    def save_png(self, path: str | os.PathLike[str] | BinaryIO, label: int | None = None, top_k: int = 5,
                 alpha: float = 0.55) -> None:
        """Write :meth:`overlay` as a PNG file."""
        self.overlay(label, top_k, alpha).save(path, format="PNG")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of everything except the image pixels."""
        return {
            "model": self.model,
            "masking": self.masking,
            "segmentation": self.segmentation,
            "segmentation_params": self.segmentation_params,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "keep_probability": self.keep_probability,
            "kernel_width": self.kernel_width,
            "num_segments": self.num_segments,
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
