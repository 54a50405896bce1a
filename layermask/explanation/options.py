"""The options of a LIME explanation, checked once, where they are made.

:class:`ExplainOptions` holds every parameter of :func:`layermask.explain`. Constructing one checks
each field that can be checked without the image or the model, and completes the segmentation
parameters with their defaults; :meth:`ExplainOptions.check_model` adds the checks that need the
model. Both raise :class:`~layermask.errors.InvalidOptionError` naming the field, so the Python API,
the CLI, the gRPC service and the TorchServe handler refuse bad values the same way, and nothing
downstream checks them again.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from layermask.errors import InvalidOptionError
from layermask.explanation.segmentation import DEFAULT_MAX_SEGMENTS, segmentation_parameters
from layermask.masking.names import DEFAULT_MASKING, MASKING_STRATEGIES
from layermask.models.registry import LoadedModel

__all__ = ["ExplainOptions"]


def _is_integer(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _integer(name: str, value: object, minimum: int, what: str) -> int:
    if not _is_integer(value) or int(value) < minimum:
        raise InvalidOptionError(name, f"must be {what}, got {value!r}")
    return int(value)


KERNEL_WIDTH_RANGE = (1e-6, 1e6)
"""The accepted ``kernel_width``: the kernel acts on cosine distances in [0, 1], so widths outside this
range weigh the rows no differently from its ends, while widths near the float limits overflow
(a huge one) or leave no row any weight (a tiny one)."""

SEGMENTATION_MAXIMA: dict[str, dict[str, float]] = {
    "quickshift": {"kernel_size": 16.0, "sigma": 100.0},
    "slic": {"sigma": 100.0},
    "felzenszwalb": {"sigma": 100.0},
}
"""Upper bounds of the segmentation parameters whose cost grows with their value: a Gaussian pre-smoothing
``sigma`` past 100 pixels blurs a model input to a flat image but takes ever longer (minutes at 10⁶, and
an allocation failure at 10³⁰⁰), and quickshift's time grows with the square of ``kernel_size``."""

SEGMENTATION_MINIMA: dict[str, dict[str, float]] = {"quickshift": {"kernel_size": 1.0}, "slic": {"compactness": 0.01}}
"""Lower bounds stricter than the segmentation's own: skimage's quickshift refuses a kernel_size under 1, and
skimage's slic corrupts the process's heap (glibc aborts it) for a compactness of about 1e-200 and below,
where its distance weight underflows; skimage suggests 0.01 to 100."""


def _real(name: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidOptionError(name, f"must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain a prediction with LIME (see :func:`layermask.explain`).

    Attributes:
        masking: how hidden segments are removed: one of :data:`~layermask.MASKING_STRATEGIES`.
        segmentation: a method (``quickshift``, ``slic``, ``felzenszwalb``, ``grid``) or an integer
            label map, drawn either at the model's input size or on the original image (then
            resized and cropped like the image).
        segmentation_params: the method's parameters; stored completed with their defaults.
            A label map takes none.
        max_segments: the most segments a segmentation may have.
        num_samples: perturbations sampled (rows of the keep-matrix, the first all ones).
        keep_probability: the probability, in (0, 1], that a segment is kept in a sampled row.
        kernel_width: width of LIME's exponential kernel on the cosine distance to the all-ones row.
        labels: the classes to explain, in this order; if ``None``, the ``top_labels`` classes of
            the unmasked prediction are explained.
        top_labels: how many top classes to explain when ``labels`` is ``None``.
        seed: seed of the keep-matrix sampling.
        batch_size: rows per forward pass; ``None`` picks
            :data:`~layermask.explanation.lime.DEFAULT_BATCH_SIZE`.

    Raises:
        InvalidOptionError: a field is invalid; ``field`` names it.
    """

    masking: str = DEFAULT_MASKING
    segmentation: str | np.ndarray = "quickshift"
    segmentation_params: Mapping[str, Any] = field(default_factory=dict)
    max_segments: int = DEFAULT_MAX_SEGMENTS
    num_samples: int = 1000
    keep_probability: float = 0.5
    kernel_width: float = 0.25
    labels: Sequence[int] | None = None
    top_labels: int = 1
    seed: int = 0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        def store(name: str, value: object) -> None:
            object.__setattr__(self, name, value)  # normalising a frozen instance, once, at construction

        if self.masking not in MASKING_STRATEGIES:
            raise InvalidOptionError("masking", f"unknown strategy {self.masking!r}; "
                                                f"choose one of {', '.join(MASKING_STRATEGIES)}")
        store("segmentation_params", self._checked_segmentation())
        store("max_segments", _integer("max_segments", self.max_segments, 2, "an integer of at least 2"))
        store("num_samples", _integer("num_samples", self.num_samples, 2, "an integer of at least 2"))
        keep = _real("keep_probability", self.keep_probability)
        if not 0.0 < keep <= 1.0:
            raise InvalidOptionError("keep_probability", f"must be in (0, 1], got {self.keep_probability!r}")
        store("keep_probability", keep)
        width = _real("kernel_width", self.kernel_width)
        if width <= 0:
            raise InvalidOptionError("kernel_width", f"must be positive, got {self.kernel_width!r}")
        if not KERNEL_WIDTH_RANGE[0] <= width <= KERNEL_WIDTH_RANGE[1]:
            raise InvalidOptionError("kernel_width", f"must be between {KERNEL_WIDTH_RANGE[0]:g} and "
                                                     f"{KERNEL_WIDTH_RANGE[1]:g}, got {self.kernel_width!r}")
        store("kernel_width", width)
        store("labels", self._checked_labels())
        store("top_labels", _integer("top_labels", self.top_labels, 1, "an integer of at least 1"))
        store("seed", _integer("seed", self.seed, 0, "a non-negative integer"))
        if self.batch_size is not None:
            store("batch_size", _integer("batch_size", self.batch_size, 1, "a positive integer"))

    def _checked_segmentation(self) -> dict[str, Any]:
        """The segmentation parameters completed with their defaults ({} for a label map)."""
        if isinstance(self.segmentation, np.ndarray):
            if self.segmentation_params:
                raise InvalidOptionError("segmentation_params", "a label map takes no segmentation parameters")
            labels = self.segmentation
            if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
                raise InvalidOptionError("segmentation", "a label map must be a 2-D array of integers, got "
                                                         f"shape {labels.shape} of {labels.dtype}")
            return {}
        if not isinstance(self.segmentation, str):
            raise InvalidOptionError("segmentation", f"must be a method name or a label map, "
                                                     f"got {type(self.segmentation).__name__}")
        params = segmentation_parameters(self.segmentation, self.segmentation_params)
        for name, minimum in SEGMENTATION_MINIMA.get(self.segmentation, {}).items():
            if params[name] < minimum:
                raise InvalidOptionError("segmentation_params", f"{self.segmentation} parameter {name} must be at "
                                                                f"least {minimum:g}, got {params[name]!r}")
        for name, maximum in SEGMENTATION_MAXIMA.get(self.segmentation, {}).items():
            if params[name] > maximum:
                raise InvalidOptionError("segmentation_params", f"{self.segmentation} parameter {name} must be at "
                                                                f"most {maximum:g}, got {params[name]!r}")
        return params

    def _checked_labels(self) -> tuple[int, ...] | None:
        if self.labels is None:
            return None
        if isinstance(self.labels, str | bytes) or not hasattr(self.labels, "__iter__"):
            raise InvalidOptionError("labels", f"must be a sequence of class indices or None, got {self.labels!r}")
        labels = list(self.labels)
        if not labels:
            raise InvalidOptionError("labels", "must not be empty; give None to explain the top labels")
        if not all(_is_integer(label) and int(label) >= 0 for label in labels):
            raise InvalidOptionError("labels", f"must be non-negative class indices, got {labels}")
        if len(set(labels)) != len(labels):
            raise InvalidOptionError("labels", f"must be distinct, got {labels}")
        return tuple(int(label) for label in labels)

    @property
    def segmentation_method(self) -> str:
        """The segmentation's name: the method, or ``"label_map"``."""
        return self.segmentation if isinstance(self.segmentation, str) else "label_map"

    def replace(self, **changes: Any) -> ExplainOptions:
        """A copy with ``changes`` applied, checked like a new instance (``TypeError`` for an unknown name).

        A new ``segmentation`` without ``segmentation_params`` starts from its own defaults.
        """
        if not changes:
            return self
        if "segmentation" in changes:
            changes.setdefault("segmentation_params", {})
        return dataclasses.replace(self, **changes)

    def check_model(self, model: LoadedModel) -> None:
        """Check the fields that depend on ``model``: the labels against its class count."""
        classes = model.num_classes
        if self.labels is not None:
            bad = [label for label in self.labels if label >= classes]
            if bad:
                raise InvalidOptionError("labels", f"{bad} out of range for a model with {classes} classes")
        elif self.top_labels > classes:
            raise InvalidOptionError("top_labels", f"must be at most {classes} for a model with {classes} "
                                                   f"classes, got {self.top_labels}")
