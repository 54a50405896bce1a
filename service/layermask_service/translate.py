"""Translating between the protobuf messages and the core's arguments and results.

Every problem with a request raises :class:`InvalidArgument` with a message that starts with the
offending field's name.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from layermask.explanation.result import ClassScore, Explanation
from layermask.explanation.segmentation import segmentation_parameters
from layermask.models.images import decode_image
from layermask.models.registry import LoadedModel
from layermask_service.proto import explain_pb2 as pb

MASKING_NAMES: dict[int, str] = {pb.MASKING_UNSPECIFIED: "layer", pb.MASKING_LAYER: "layer", pb.MASKING_GREY: "grey",
                 pb.MASKING_BLACK: "black", pb.MASKING_BLUR: "blur"}
MASKING_ENUMS: dict[str, Any] = {"layer": pb.MASKING_LAYER, "grey": pb.MASKING_GREY, "black": pb.MASKING_BLACK,
                 "blur": pb.MASKING_BLUR}


class InvalidArgument(ValueError):
    """A request field is invalid; the message names the field."""


@dataclass
class SegmentationChoice:
    """A method name with parameters, or a client label map still to be fitted to the model's input."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    label_map: np.ndarray | None = None


@dataclass
class ExplainJob:
    model: str
    image: Image.Image
    masking: str
    segmentation: SegmentationChoice
    num_samples: int
    keep_probability: float
    kernel_width: float
    seed: int
    labels: list[int] | None
    top_labels: int
    heatmap_format: Any


def masking_name(value: int, field_name: str = "masking") -> str:
    if value not in MASKING_NAMES:
        raise InvalidArgument(f"{field_name}: unknown masking strategy {value}")
    return MASKING_NAMES[value]


def image_from(data: bytes, field_name: str = "image") -> Image.Image:
    try:
        return decode_image(data)
    except ValueError as error:
        raise InvalidArgument(f"{field_name}: {error}") from None


def segmentation_from(message: pb.Segmentation, field_name: str = "segmentation") -> SegmentationChoice:
    method = message.WhichOneof("method")
    if method is None:
        return SegmentationChoice("quickshift", segmentation_parameters("quickshift"))
    chosen = getattr(message, method)
    if method == "label_map":
        height, width = chosen.height, chosen.width
        if height < 1 or width < 1 or height * width != len(chosen.labels):
            raise InvalidArgument(f"{field_name}.label_map: {len(chosen.labels)} labels do not fill "
                                  f"height × width = {height} × {width}")
        return SegmentationChoice("label_map", {}, np.asarray(chosen.labels, dtype=np.int64).reshape(height, width))
    params = {f.name: value for f, value in chosen.ListFields()}
    try:
        return SegmentationChoice(method, segmentation_parameters(method, params))
    except ValueError as error:
        raise InvalidArgument(f"{field_name}.{method}: {error}") from None


def explain_job(request: pb.ExplainRequest, default_model: str, max_samples: int) -> ExplainJob:
    """Check every field of ``request`` that needs no model, and gather the core's arguments."""
    num_samples = request.num_samples if request.HasField("num_samples") else 1000
    if not 2 <= num_samples <= max_samples:
        raise InvalidArgument(f"num_samples: must be between 2 and {max_samples}, got {num_samples}")
    keep = request.keep_probability if request.HasField("keep_probability") else 0.5
    if not 0.0 < keep <= 1.0:
        raise InvalidArgument(f"keep_probability: must be in (0, 1], got {keep}")
    width = request.kernel_width if request.HasField("kernel_width") else 0.25
    if not (width > 0 and math.isfinite(width)):
        raise InvalidArgument(f"kernel_width: must be positive and finite, got {width}")
    seed = request.seed if request.HasField("seed") else 0
    if seed < 0:
        raise InvalidArgument(f"seed: must not be negative, got {seed}")
    if request.labels and request.HasField("top_labels"):
        raise InvalidArgument("labels: give either labels or top_labels, not both")
    top_labels = request.top_labels if request.HasField("top_labels") else 1
    if top_labels < 1:
        raise InvalidArgument(f"top_labels: must be at least 1, got {top_labels}")
    if request.heatmap_format not in pb.HeatmapFormat.values():
        raise InvalidArgument(f"heatmap_format: unknown format {request.heatmap_format}")
    return ExplainJob(
        model=request.model or default_model, image=image_from(request.image),
        masking=masking_name(request.masking), segmentation=segmentation_from(request.segmentation),
        num_samples=num_samples, keep_probability=keep, kernel_width=width, seed=seed,
        labels=list(request.labels) or None, top_labels=top_labels, heatmap_format=request.heatmap_format,
    )


def segmentation_for(model: LoadedModel, choice: SegmentationChoice,
                     image_size: tuple[int, int]) -> tuple[str | np.ndarray, dict[str, Any] | None]:
    """The core's ``segmentation`` and ``segmentation_params`` for ``choice`` on an image of ``image_size`` (H, W)."""
    if choice.label_map is None:
        return choice.method, choice.params
    labels = choice.label_map
    if labels.shape == tuple(model.input_size):
        return labels, None
    if labels.shape == image_size:
        return model.preprocessing.crop_label_map(labels), None
    raise InvalidArgument(f"segmentation.label_map: shape {labels.shape} matches neither the image "
                          f"{image_size} nor the model's input size {tuple(model.input_size)}")


def explain_arguments(job: ExplainJob, model: LoadedModel) -> dict[str, Any]:
    """Keyword arguments of :func:`layermask.explain` (and ``plan_explanation``) for ``job`` on ``model``."""
    check_labels(job.labels, job.top_labels, model.num_classes)
    segmentation, params = segmentation_for(model, job.segmentation, (job.image.height, job.image.width))
    return dict(masking=job.masking, segmentation=segmentation, segmentation_params=params,
                num_samples=job.num_samples, keep_probability=job.keep_probability, kernel_width=job.kernel_width,
                labels=job.labels, top_labels=job.top_labels, seed=job.seed)


def check_labels(labels: list[int] | None, top_labels: int, num_classes: int) -> None:
    if labels is not None:
        bad = [label for label in labels if not 0 <= label < num_classes]
        if bad:
            raise InvalidArgument(f"labels: {bad} out of range for a model with {num_classes} classes")
        if len(set(labels)) != len(labels):
            raise InvalidArgument(f"labels: must be distinct, got {labels}")
    elif top_labels > num_classes:
        raise InvalidArgument(f"top_labels: must be at most {num_classes}, got {top_labels}")


def class_scores(scores: list[ClassScore]) -> list[pb.ClassScore]:
    return [pb.ClassScore(label=s.label, name=s.name, probability=s.probability) for s in scores]


def heatmap_message(explanation: Explanation, label: int, fmt: Any) -> pb.Heatmap:
    height, width = explanation.segments.shape
    if fmt == pb.HEATMAP_FORMAT_PNG_OVERLAY:
        buffer = io.BytesIO()
        explanation.save_png(buffer, label)
        data = buffer.getvalue()
    else:
        data = explanation.heatmap(label).astype("<f2").tobytes()
    return pb.Heatmap(label=label, format=fmt, height=height, width=width, data=data)


def explain_response(explanation: Explanation, heatmap_format: int, decode_seconds: float) -> pb.ExplainResponse:
    timings = explanation.timings
    return pb.ExplainResponse(
        model=explanation.model, masking=MASKING_ENUMS[explanation.masking],
        segmentation=explanation.segmentation, seed=explanation.seed, num_samples=explanation.num_samples,
        keep_probability=explanation.keep_probability, kernel_width=explanation.kernel_width,
        segments=segments_message(explanation.segments),
        explanations=[pb.LabelExplanation(label=e.label, name=e.name, weights=e.weights.tolist(),
                                          intercept=e.intercept, score=e.score,
                                          local_prediction=e.local_prediction)
                      for e in explanation.explanations.values()],
        top_predictions=class_scores(explanation.top_predictions),
        heatmaps=[] if heatmap_format == pb.HEATMAP_FORMAT_NONE else
        [heatmap_message(explanation, label, heatmap_format) for label in explanation.labels],
        timings=pb.StageTimings(decode_seconds=decode_seconds,
                                segmentation_seconds=timings.get("segmentation", 0.0),
                                inference_seconds=timings.get("inference", 0.0), fit_seconds=timings.get("fit", 0.0)),
    )


def segments_message(segments: np.ndarray) -> pb.Segments:
    height, width = segments.shape
    return pb.Segments(height=height, width=width, count=int(segments.max()) + 1,
                       zlib_uint16=zlib.compress(segments.astype("<u2").tobytes()))


def segments_from(message: pb.Segments, field_name: str = "segments",
                  max_pixels: int = 64 * 1024 * 1024) -> np.ndarray:
    """Decode :class:`pb.Segments`, never inflating more than the stated ``height × width``."""
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
