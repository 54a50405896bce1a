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

__all__ = ["AUTO", "DEFAULT_METHOD", "METHODS", "AdaptiveSampling", "ExplainOptions", "OcclusionWindow"]

METHODS = ("lime", "kernel_shap", "occlusion")
"""The explanation methods, in the order the CLI, the proto and the docs list them."""
DEFAULT_METHOD = "lime"
AUTO = "auto"
"""``num_samples=AUTO``: sample in batches until the weights settle (see :class:`AdaptiveSampling`)."""
ADAPTIVE_METHODS = ("lime", "kernel_shap")


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
class AdaptiveSampling:
    """When ``num_samples="auto"`` stops sampling.

    Rows are scored ``batch`` at a time and the weights refitted after each batch; sampling stops
    once the explained label's weights have a cosine similarity of at least ``tolerance`` with the
    fit one batch earlier *and* the ``top_k`` segments are unchanged for two consecutive checks,
    or at ``max_samples`` rows.
    """

    tolerance: float = 0.99
    top_k: int = 5
    batch: int = 64
    max_samples: int = 2000

    def __post_init__(self) -> None:
        tolerance = _real("adaptive.tolerance", self.tolerance)
        if not 0.0 < tolerance <= 1.0:
            raise InvalidOptionError("adaptive.tolerance", f"must be in (0, 1], got {self.tolerance!r}")
        object.__setattr__(self, "tolerance", tolerance)
        object.__setattr__(self, "top_k", _integer("adaptive.top_k", self.top_k, 1, "an integer of at least 1"))
        object.__setattr__(self, "batch", _integer("adaptive.batch", self.batch, 2, "an integer of at least 2"))
        maximum = _integer("adaptive.max_samples", self.max_samples, 2, "an integer of at least 2")
        if maximum < self.batch:
            raise InvalidOptionError("adaptive.max_samples", f"must be at least adaptive.batch ({self.batch}), "
                                                             f"got {maximum}")
        object.__setattr__(self, "max_samples", maximum)


@dataclass(frozen=True)
class OcclusionWindow:
    """The sliding window of ``method="occlusion"``: a ``window``×``window`` square moved by ``stride``
    pixels over the model's input crop (the last window of a row or column is aligned with the edge)."""

    window: int = 32
    stride: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", _integer("occlusion.window", self.window, 1, "a positive integer"))
        object.__setattr__(self, "stride", _integer("occlusion.stride", self.stride, 1, "a positive integer"))


def _sub_options(name: str, value: object, kind: type[Any]) -> Any:
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        try:
            return kind(**value)
        except TypeError as error:
            raise InvalidOptionError(name, f"unknown parameter in {dict(value)!r}; the parameters are "
                                           f"{', '.join(f.name for f in dataclasses.fields(kind))}") from error
    raise InvalidOptionError(name, f"must be a {kind.__name__} or a mapping, got {type(value).__name__}")


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain a prediction with LIME (see :func:`layermask.explain`).

    Attributes:
        method: the explanation method: ``lime`` (a weighted ridge fit), ``kernel_shap`` (Shapley
            values of the segments) or ``occlusion`` (a sliding window); see :data:`METHODS`.
        masking: how hidden segments are removed: one of :data:`~layermask.MASKING_STRATEGIES`.
        segmentation: a method (``quickshift``, ``slic``, ``felzenszwalb``, ``grid``) or an integer
            label map, drawn either at the model's input size or on the original image (then
            resized and cropped like the image).
        segmentation_params: the method's parameters; stored completed with their defaults.
            A label map takes none.
        max_segments: the most segments a segmentation may have.
        num_samples: perturbations sampled (rows of the keep-matrix, the first all ones), or
            ``"auto"`` (``lime`` and ``kernel_shap``) to sample until the weights settle, as
            ``adaptive`` says. Occlusion takes one row per window and ignores it.
        adaptive: when ``num_samples="auto"`` stops (an :class:`AdaptiveSampling` or a mapping).
        occlusion: the window of ``method="occlusion"`` (an :class:`OcclusionWindow` or a mapping).
        keep_probability: the probability, in (0, 1], that a segment is kept in a sampled row.
        kernel_width: width of LIME's exponential kernel on the cosine distance to the all-ones row.
        labels: the classes to explain, in this order; if ``None``, the ``top_labels`` classes of
            the unmasked prediction are explained.
        top_labels: how many top classes to explain when ``labels`` is ``None``.
        seed: seed of the keep-matrix sampling.
        batch_size: rows per forward pass; ``None`` picks
            :data:`~layermask.explanation.engine.DEFAULT_BATCH_SIZE`.

    Raises:
        InvalidOptionError: a field is invalid; ``field`` names it.
    """

    masking: str = DEFAULT_MASKING
    method: str = DEFAULT_METHOD
    segmentation: str | np.ndarray = "quickshift"
    segmentation_params: Mapping[str, Any] = field(default_factory=dict)
    max_segments: int = DEFAULT_MAX_SEGMENTS
    num_samples: int | str = 1000
    keep_probability: float = 0.5
    kernel_width: float = 0.25
    labels: Sequence[int] | None = None
    top_labels: int = 1
    seed: int = 0
    batch_size: int | None = None
    adaptive: AdaptiveSampling = field(default_factory=AdaptiveSampling)
    occlusion: OcclusionWindow = field(default_factory=OcclusionWindow)

    def __post_init__(self) -> None:
        def store(name: str, value: object) -> None:
            object.__setattr__(self, name, value)  # normalising a frozen instance, once, at construction

        if self.masking not in MASKING_STRATEGIES:
            raise InvalidOptionError("masking", f"unknown strategy {self.masking!r}; "
                                                f"choose one of {', '.join(MASKING_STRATEGIES)}")
        if self.method not in METHODS:
            raise InvalidOptionError("method", f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        store("segmentation_params", self._checked_segmentation())
        store("max_segments", _integer("max_segments", self.max_segments, 2, "an integer of at least 2"))
        if self.num_samples == AUTO:
            if self.method not in ADAPTIVE_METHODS:
                raise InvalidOptionError("num_samples", f"'auto' works for {' and '.join(ADAPTIVE_METHODS)}, "
                                                        f"not {self.method}")
        else:
            store("num_samples", _integer("num_samples", self.num_samples, 2, "an integer of at least 2 or 'auto'"))
        store("adaptive", _sub_options("adaptive", self.adaptive, AdaptiveSampling))
        store("occlusion", _sub_options("occlusion", self.occlusion, OcclusionWindow))
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
    def adaptive_sampling(self) -> bool:
        """Whether the sample count is chosen as the run goes (``num_samples="auto"``)."""
        return self.num_samples == AUTO

    @property
    def sample_budget(self) -> int:
        """The most rows a LIME or KernelSHAP run may score: ``num_samples``, or ``adaptive.max_samples``
        for ``"auto"``."""
        return self.adaptive.max_samples if isinstance(self.num_samples, str) else self.num_samples

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
        """Check the fields that depend on ``model``: the labels against its class count, the occlusion
        window against its input size."""
        classes = model.num_classes
        if self.method == "occlusion" and self.occlusion.window > min(model.input_size):
            raise InvalidOptionError("occlusion.window", f"must be at most the model's input size "
                                                         f"{min(model.input_size)}, got {self.occlusion.window}")
        if self.labels is not None:
            bad = [label for label in self.labels if label >= classes]
            if bad:
                raise InvalidOptionError("labels", f"{bad} out of range for a model with {classes} classes")
        elif self.top_labels > classes:
            raise InvalidOptionError("top_labels", f"must be at most {classes} for a model with {classes} "
                                                   f"classes, got {self.top_labels}")
