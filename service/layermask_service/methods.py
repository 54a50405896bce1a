"""The explanation methods in the v1 API: ``method``, ``num_samples = 0`` (adaptive) with ``adaptive``,
and ``occlusion``, in the proto's terms.

One place for the enum ↔ name mapping of the core's :data:`~layermask.explanation.options.METHODS`.
Adaptive sampling is ``num_samples="auto"`` in Python and ``num_samples = 0`` in the proto (unset
keeps the default 1000), so the errors about it name 0, not ``"auto"``.
"""

from __future__ import annotations

import math
from typing import Any

from layermask.explanation.occlusion import window_starts
from layermask.explanation.options import ADAPTIVE_METHODS, AUTO, DEFAULT_METHOD, METHODS, ExplainOptions
from layermask_service.errors import InvalidArgument
from layermask_service.proto import explain_pb2 as pb

METHOD_ENUMS: dict[str, Any] = {name: pb.Method.Value(f"METHOD_{name.upper()}") for name in METHODS}
"""The proto enum value of each core method (a method without one fails here, at import)."""
METHOD_NAMES: dict[int, str] = {pb.METHOD_UNSPECIFIED: DEFAULT_METHOD, **{v: k for k, v in METHOD_ENUMS.items()}}


def method_name(value: int) -> str:
    if value not in METHOD_NAMES:
        raise InvalidArgument(f"method: unknown method {value}")
    return METHOD_NAMES[value]


def method_enum_name(method: str) -> str:
    return pb.Method.Name(METHOD_ENUMS[method])


def sampling_options(request: pb.ExplainRequest, method: str) -> dict[str, Any]:
    """The options of ``num_samples`` and its sub-messages, in the proto's terms: 0 is adaptive (``"auto"``),
    which ``adaptive`` tunes; ``occlusion`` goes with ``METHOD_OCCLUSION``."""
    sampling: dict[str, Any] = {}
    if request.HasField("num_samples"):
        value = request.num_samples
        if value == 0 and method not in ADAPTIVE_METHODS:
            raise InvalidArgument(f"num_samples: 0 (adaptive) works for "
                                  f"{' and '.join(map(method_enum_name, ADAPTIVE_METHODS))}, "
                                  f"not {method_enum_name(method)}")
        if value != 0 and value < 2:
            raise InvalidArgument(f"num_samples: must be 0 (adaptive) or at least 2, got {value}")
        sampling["num_samples"] = AUTO if value == 0 else value
    if request.HasField("adaptive"):
        if sampling.get("num_samples") != AUTO:
            raise InvalidArgument("adaptive: applies only with num_samples = 0 (adaptive)")
        sampling["adaptive"] = {f.name: value for f, value in request.adaptive.ListFields()}
    if request.HasField("occlusion"):
        if method != "occlusion":
            raise InvalidArgument(f"occlusion: applies only with method = METHOD_OCCLUSION, "
                                  f"not {method_enum_name(method)}")
        sampling["occlusion"] = {f.name: value for f, value in request.occlusion.ListFields()}
    return sampling


def check_occlusion_rows(options: ExplainOptions, input_size: tuple[int, int], max_samples: int) -> None:
    """An occlusion run scores one row per window and the unmasked image: refuse more than ``max_samples``,
    this server's limit on the rows of a request. (A window larger than the input is the core's to refuse.)"""
    window = options.occlusion
    if options.method != "occlusion" or window.window > min(input_size):
        return
    rows = 1 + math.prod(len(window_starts(size, window.window, window.stride)) for size in input_size)
    if rows > max_samples:
        raise InvalidArgument(f"occlusion.stride: {window.stride} with window {window.window} scores {rows} rows on "
                              f"the model's {input_size[0]}×{input_size[1]} input, more than this server's limit of "
                              f"{max_samples}; use a larger stride")
