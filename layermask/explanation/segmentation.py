"""Segmenting an image into the regions LIME switches on and off.

All methods return an ``int32`` label map with consecutive labels ``0 … n-1``. Parameters are
validated here so that every caller (Python API, CLI, gRPC) reports bad values the same way: an
:class:`~layermask.errors.InvalidOptionError` naming the option (``segmentation``,
``segmentation_params``) of :class:`~layermask.explanation.options.ExplainOptions`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage import segmentation as skseg

from layermask.errors import InvalidOptionError

__all__ = ["DEFAULT_MAX_SEGMENTS", "SEGMENTATIONS", "segment", "segmentation_parameters"]

DEFAULT_MAX_SEGMENTS = 1000
SEGMENTATIONS = ("quickshift", "slic", "felzenszwalb", "grid")


@dataclass(frozen=True)
class _Parameter:
    kind: type
    default: Any
    minimum: float | None = None
    positive: bool = False


# Defaults of quickshift follow lime's LimeImageExplainer.
_PARAMETERS: dict[str, dict[str, _Parameter]] = {
    "quickshift": {
        "kernel_size": _Parameter(float, 4.0, positive=True),
        "max_dist": _Parameter(float, 200.0, positive=True),
        "ratio": _Parameter(float, 0.2, minimum=0.0),
        "sigma": _Parameter(float, 0.0, minimum=0.0),
    },
    "slic": {
        "n_segments": _Parameter(int, 100, minimum=2),
        "compactness": _Parameter(float, 10.0, positive=True),
        "sigma": _Parameter(float, 1.0, minimum=0.0),
    },
    "felzenszwalb": {
        "scale": _Parameter(float, 100.0, positive=True),
        "sigma": _Parameter(float, 0.5, minimum=0.0),
        "min_size": _Parameter(int, 50, minimum=1),
    },
    "grid": {
        "patch_size": _Parameter(int, 16, minimum=1),
    },
}


def segmentation_parameters(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``params`` checked against ``method``'s parameters and completed with their defaults."""
    if method not in _PARAMETERS:
        raise InvalidOptionError("segmentation", f"unknown segmentation {method!r}; "
                                                 f"choose one of {', '.join(SEGMENTATIONS)} or a label map")
    spec = _PARAMETERS[method]
    given = dict(params or {})
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise InvalidOptionError("segmentation_params", f"unknown {method} parameter(s) {', '.join(unknown)}; "
                                                        f"known: {', '.join(spec)}")
    return {name: _converted(method, name, parameter, given.get(name, parameter.default))
            for name, parameter in spec.items()}


def _converted(method: str, name: str, parameter: _Parameter, given: Any) -> Any:
    """``given`` as the parameter's type, checked against its bounds."""

    def refuse(what: str) -> InvalidOptionError:
        return InvalidOptionError("segmentation_params", f"{method} parameter {name} must be {what}, got {given!r}")

    try:
        value = parameter.kind(given)
        if parameter.kind is int and float(given) != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise refuse(parameter.kind.__name__) from None
    if not np.isfinite(value):
        raise refuse("finite")
    if parameter.positive and value <= 0:
        raise refuse("positive")
    if parameter.minimum is not None and value < parameter.minimum:
        raise refuse(f"at least {parameter.minimum:g}")
    return value


def _grid(image: np.ndarray, patch_size: int) -> np.ndarray:
    rows = np.arange(image.shape[0]) // patch_size
    cols = np.arange(image.shape[1]) // patch_size
    return rows[:, None] * (cols.max() + 1) + cols[None, :]


_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "quickshift": lambda image, **p: skseg.quickshift(image, rng=0, **p),
    "slic": lambda image, **p: skseg.slic(image, start_label=0, **p),
    "felzenszwalb": lambda image, **p: skseg.felzenszwalb(image, **p),
    "grid": _grid,
}


def relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels ``0 … n-1`` in order of first appearance of each original value's rank."""
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int32)


def check_segment_count(segments: np.ndarray, max_segments: int = DEFAULT_MAX_SEGMENTS) -> int:
    count = int(segments.max()) + 1
    if count < 2:
        raise InvalidOptionError("segmentation", "the segmentation has a single segment; LIME needs at least two")
    if count > max_segments:
        raise InvalidOptionError("segmentation", f"the segmentation has {count} segments, more than the maximum of "
                                                 f"{max_segments} (max_segments)")
    return count


def segment(
    image: np.ndarray,
    method: str | np.ndarray = "quickshift",
    params: Mapping[str, Any] | None = None,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
) -> np.ndarray:
    """Label map of ``image`` (H×W×3 uint8) by ``method``, or a client label map given as ``method``.

    Raises :class:`~layermask.errors.InvalidOptionError` (a ``ValueError``) for an unknown method or
    parameter, a label map of the wrong shape or type, and a result with one segment or more than
    ``max_segments``.
    """
    if isinstance(method, np.ndarray):
        if params:
            raise InvalidOptionError("segmentation_params", "a client label map takes no segmentation parameters")
        if method.shape != image.shape[:2]:
            raise InvalidOptionError("segmentation", f"label map shape {method.shape} does not match the image "
                                                     f"{image.shape[:2]}")
        if not np.issubdtype(method.dtype, np.integer):
            raise InvalidOptionError("segmentation", f"label map must hold integers, got dtype {method.dtype}")
        labels = relabel(method)
    else:
        checked = segmentation_parameters(method, params)
        labels = relabel(_METHODS[method](image, **checked))
    check_segment_count(labels, max_segments)
    return labels
