"""Translating between the protobuf messages and the core's options and results.

Every problem with a request raises :class:`~layermask_service.errors.InvalidArgument` with a
message that starts with the offending field's name. The explain fields are checked by the core's
:class:`~layermask.ExplainOptions`, built once per request by :func:`explain_job`; its errors name
the option, which :meth:`ExplainJob.request_error` turns into the request's field.
"""

from __future__ import annotations

import dataclasses
import io
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from PIL import Image

from layermask.errors import InvalidOptionError
from layermask.explanation.options import AUTO, ExplainOptions
from layermask.explanation.result import ClassScore, Explanation, View
from layermask.masking.names import DEFAULT_MASKING, MASKING_STRATEGIES
from layermask.models.images import MAX_IMAGE_PIXELS, decode_image
from layermask_service.errors import InvalidArgument
from layermask_service.methods import METHOD_ENUMS, method_name, sampling_options
from layermask_service.proto import explain_pb2 as pb

MASKING_ENUMS: dict[str, Any] = {name: pb.Masking.Value(f"MASKING_{name.upper()}") for name in MASKING_STRATEGIES}
"""The proto enum value of each core strategy (a strategy without one fails here, at import)."""
MASKING_NAMES: dict[int, str] = {pb.MASKING_UNSPECIFIED: DEFAULT_MASKING, **{v: k for k, v in MASKING_ENUMS.items()}}

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ExplainOptions))
_REQUEST_FIELDS = pb.ExplainRequest.DESCRIPTOR.fields_by_name
SCALAR_OPTIONS = tuple(f.name for f in pb.ExplainRequest.DESCRIPTOR.fields
                       if f.name in _OPTION_NAMES and f.has_presence and f.message_type is None)
"""The ``optional`` scalar fields of ``ExplainRequest`` that are ExplainOptions fields of the same name;
unset, they take the options' defaults."""


@dataclass(frozen=True)
class RequestedSegmentation:
    """A request's segmentation as the core takes it, and the field it came from.

    ``field`` is ``<prefix>.slic``, ``<prefix>.label_map`` etc., or ``<prefix>`` when no method is
    set (the core's default). A label map is not checked here beyond filling its height × width.
    """

    segmentation: str | np.ndarray
    params: dict[str, Any]
    field: str


@dataclass(frozen=True)
class HeatmapChoice:
    """The heatmaps a request asks for: ``format`` (``pb.HeatmapFormat``) drawn on ``view``
    (``pb.HeatmapView``; UNSPECIFIED is the crop)."""

    format: int
    view: int = pb.HEATMAP_VIEW_CROP

    @property
    def on(self) -> View:
        """The core's name for :attr:`view`."""
        return "original" if self.view == pb.HEATMAP_VIEW_ORIGINAL else "crop"


@dataclass(frozen=True)
class ExplainJob:
    """An ``ExplainRequest`` translated: the model's name, the decoded image and the checked options.

    ``heatmap_format`` holds the request's ``heatmap_format`` and ``heatmap_view`` together.
    """

    model: str
    image: Image.Image
    options: ExplainOptions
    heatmap_format: HeatmapChoice
    segmentation: RequestedSegmentation

    def request_error(self, error: InvalidOptionError) -> Exception:
        """``error``, from checking :attr:`options` against the model and the image, as :func:`option_error`."""
        return option_error(error, self.segmentation)


def option_error(error: InvalidOptionError, segmentation: RequestedSegmentation) -> Exception:
    """``error`` as the :class:`InvalidArgument` naming the request field behind the option.

    The segmentation options are named by ``segmentation``'s field. An option that no request
    field sets (a server setting such as ``batch_size``) is not the caller's mistake: ``error`` is
    then returned as it is, to be reported as an internal error.
    """
    if error.field in ("segmentation", "segmentation_params"):
        return InvalidArgument(f"{segmentation.field}: {error.reason}")
    if error.field.split(".")[0] in _REQUEST_FIELDS:  # also a sub-message's field: "occlusion.window"
        return InvalidArgument(str(error))
    return error


def masking_name(value: int, field_name: str = "masking") -> str:
    if value not in MASKING_NAMES:
        raise InvalidArgument(f"{field_name}: unknown masking strategy {value}")
    return MASKING_NAMES[value]


def image_from(data: bytes, field_name: str = "image") -> Image.Image:
    try:
        return decode_image(data)
    except ValueError as error:
        raise InvalidArgument(f"{field_name}: {error}") from None


def segmentation_from(message: pb.Segmentation, field_name: str = "segmentation") -> RequestedSegmentation:
    method = message.WhichOneof("method")
    if method is None:
        return RequestedSegmentation(ExplainOptions.segmentation, {}, field_name)
    chosen = getattr(message, method)
    field = f"{field_name}.{method}"
    if method == "label_map":
        height, width = chosen.height, chosen.width
        if height < 1 or width < 1 or height * width != len(chosen.labels):
            raise InvalidArgument(f"{field}: {len(chosen.labels)} labels do not fill "
                                  f"height × width = {height} × {width}")
        return RequestedSegmentation(np.asarray(chosen.labels, dtype=np.int64).reshape(height, width), {}, field)
    return RequestedSegmentation(method, {f.name: value for f, value in chosen.ListFields()}, field)


@dataclass(frozen=True)
class CheckedExplainRequest:
    """Every field of an ``ExplainRequest`` checked but the image, which is decoded later
    (:meth:`with_image`), once the call has a compute slot: a bad request is refused at once, never
    queued, and a queue full of requests holds no decoded images."""

    model: str
    options: ExplainOptions
    heatmap_format: HeatmapChoice
    segmentation: RequestedSegmentation

    def with_image(self, data: bytes) -> ExplainJob:
        return ExplainJob(self.model, image_from(data), self.options, self.heatmap_format, self.segmentation)


def check_explain_request(request: pb.ExplainRequest, default_model: str, max_samples: int) -> CheckedExplainRequest:
    """Check every field of ``request`` that needs neither the model nor the decoded image.

    ``max_samples`` is this server's limit on ``num_samples``.
    """
    if not request.image:
        raise InvalidArgument("image: image is empty")
    if request.labels and request.HasField("top_labels"):
        raise InvalidArgument("labels: give either labels or top_labels, not both")
    if request.heatmap_format not in pb.HeatmapFormat.values():
        raise InvalidArgument(f"heatmap_format: unknown format {request.heatmap_format}")
    if request.heatmap_view not in pb.HeatmapView.values():
        raise InvalidArgument(f"heatmap_view: unknown view {request.heatmap_view}")
    segmentation = segmentation_from(request.segmentation)
    method = method_name(request.method)
    scalars = {name: getattr(request, name) for name in SCALAR_OPTIONS if request.HasField(name)}
    scalars |= sampling_options(request, method)  # num_samples in the proto's terms, adaptive, occlusion
    try:
        options = ExplainOptions(masking=masking_name(request.masking), method=method,
                                 segmentation=segmentation.segmentation, segmentation_params=segmentation.params,
                                 labels=list(request.labels) or None, **scalars)
    except InvalidOptionError as error:
        raise option_error(error, segmentation) from None
    if options.sample_budget > max_samples:
        budget = "adaptive.max_samples" if options.adaptive_sampling else "num_samples"
        raise InvalidArgument(f"{budget}: must be at most {max_samples} on this server, got {options.sample_budget}")
    heatmap = HeatmapChoice(request.heatmap_format, request.heatmap_view or pb.HEATMAP_VIEW_CROP)
    return CheckedExplainRequest(request.model or default_model, options, heatmap, segmentation)


def explain_request_from_json(payload: Mapping[str, Any]) -> pb.ExplainRequest:
    """A JSON ``ExplainRequest`` (protobuf's JSON mapping) that may also use the Python API's spellings:
    ``"num_samples": "auto"`` for 0 and the core's names for ``method`` and ``masking`` (``"kernel_shap"``).

    ``json_format.ParseError`` for anything else that is not an ``ExplainRequest``.
    """
    message = dict(payload)
    for key in ("num_samples", "numSamples"):
        if message.get(key) == AUTO:
            message[key] = 0
    for key, enums, enum in (("method", METHOD_ENUMS, pb.Method), ("masking", MASKING_ENUMS, pb.Masking)):
        if isinstance(message.get(key), str) and message[key] in enums:
            message[key] = enum.Name(enums[message[key]])
    return json_format.ParseDict(message, pb.ExplainRequest())


def explain_job(request: pb.ExplainRequest, default_model: str, max_samples: int) -> ExplainJob:
    """Check every field of ``request`` that needs no model, decode its image, and gather the core's options."""
    return check_explain_request(request, default_model, max_samples).with_image(request.image)


def class_scores(scores: list[ClassScore]) -> list[pb.ClassScore]:
    return [pb.ClassScore(label=s.label, name=s.name, probability=s.probability) for s in scores]


def heatmap_message(explanation: Explanation, label: int, fmt: Any, on: View = "crop") -> pb.Heatmap:
    """``label``'s heatmap in format ``fmt``, on the crop or the original image (NaN outside the crop)."""
    height, width = explanation.segments_on(on).shape
    if fmt == pb.HEATMAP_FORMAT_PNG_OVERLAY:
        buffer = io.BytesIO()
        explanation.save_png(buffer, label, on=on)
        data = buffer.getvalue()
    else:
        data = explanation.heatmap(label, on).astype("<f2").tobytes()
    return pb.Heatmap(label=label, format=fmt, height=height, width=width, data=data)


def explain_response(explanation: Explanation, heatmap: HeatmapChoice | int,
                     decode_seconds: float) -> pb.ExplainResponse:
    """The response for ``explanation``; ``heatmap`` is the request's choice (a bare format means the crop view).

    An occlusion run's segments are the cells its windows cut the crop into (``segmentation``
    ``"occlusion"``); its window is echoed in ``occlusion``.
    """
    heatmap = heatmap if isinstance(heatmap, HeatmapChoice) else HeatmapChoice(heatmap)
    timings = explanation.timings
    window = pb.Occlusion(**explanation.segmentation_params) if explanation.method == "occlusion" else None
    return pb.ExplainResponse(
        model=explanation.model, masking=MASKING_ENUMS[explanation.masking], method=METHOD_ENUMS[explanation.method],
        converged=explanation.converged, occlusion=window,
        segmentation=explanation.segmentation, seed=explanation.seed, num_samples=explanation.num_samples,
        keep_probability=explanation.keep_probability, kernel_width=explanation.kernel_width,
        segments=segments_message(explanation.segments),
        explanations=[pb.LabelExplanation(label=e.label, name=e.name, weights=e.weights.tolist(),
                                          intercept=e.intercept, score=e.score,
                                          local_prediction=e.local_prediction)
                      for e in explanation.explanations.values()],
        top_predictions=class_scores(explanation.top_predictions),
        heatmaps=[] if heatmap.format == pb.HEATMAP_FORMAT_NONE else
        [heatmap_message(explanation, label, heatmap.format, heatmap.on) for label in explanation.labels],
        timings=pb.StageTimings(decode_seconds=decode_seconds,
                                segmentation_seconds=timings.get("segmentation", 0.0),
                                inference_seconds=timings.get("inference", 0.0), fit_seconds=timings.get("fit", 0.0)),
    )


def segments_message(segments: np.ndarray) -> pb.Segments:
    height, width = segments.shape
    return pb.Segments(height=height, width=width, count=int(segments.max()) + 1,
                       zlib_uint16=zlib.compress(segments.astype("<u2").tobytes()))


def segments_from(message: pb.Segments, field_name: str = "segments",
                  max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode :class:`pb.Segments`, never inflating more than the stated ``height × width``.

    By default they may be as large as the largest image the service decodes.
    """
    count = message.height * message.width
    if message.height < 1 or message.width < 1 or count > max_pixels:
        raise InvalidArgument(f"{field_name}: bad size {message.height}×{message.width}")
    try:
        data = zlib.decompressobj().decompress(message.zlib_uint16, 2 * count + 1)
    except zlib.error as error:
        raise InvalidArgument(f"{field_name}: not zlib data ({error})") from None
    if len(data) != 2 * count:
        raise InvalidArgument(f"{field_name}: holds {len(data) // 2} labels, not {message.height}×{message.width}")
    return np.frombuffer(data, dtype="<u2").reshape(message.height, message.width).astype(np.int32)


def packed_mask(message: pb.PackedMask, input_size: tuple[int, int]) -> np.ndarray:
    if (message.height, message.width) != tuple(input_size):
        raise InvalidArgument(f"mask: is {message.height}×{message.width}, expected the model's input size "
                              f"{input_size[0]}×{input_size[1]}")
    count = message.height * message.width
    if len(message.bits) != math.ceil(count / 8):
        raise InvalidArgument(f"mask: {len(message.bits)} bytes do not hold {message.height}×{message.width} bits")
    bits = np.unpackbits(np.frombuffer(message.bits, dtype=np.uint8))
    return bits[:count].reshape(message.height, message.width).astype(np.float32)
