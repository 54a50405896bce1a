"""The masked-batch wire format (``protos/layermask/v1/backend.proto``), both ways.

The service's TorchServe backend encodes a :class:`~layermask.explanation.scoring.ScoringJob` as a
``MaskedBatchRequest``; the TorchServe handler decodes it back, checking every field, and answers
with a ``MaskedBatchResponse``. ``ModelDescription`` tells the service the served model's
preprocessing and class names.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF

from layermask.explanation.scoring import ScoringJob
from layermask.masking.names import MASKING_STRATEGIES
from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import LoadedModel
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.translate import (
    MASKING_ENUMS,
    InvalidArgument,
    image_from,
    masking_name,
    segments_from,
    segments_message,
)

MAX_ROWS = 4096  # per masked-batch request (the service sends batch_size rows at a time)


def pack_rows(rows: np.ndarray) -> bpb.PackedRows:
    return bpb.PackedRows(rows=rows.shape[0], columns=rows.shape[1], bits=np.packbits(rows, axis=1).tobytes())


def unpack_rows(message: bpb.PackedRows, field_name: str, columns: int) -> np.ndarray:
    """The 0/1 ``uint8`` matrix of ``message``, which must have ``columns`` columns."""
    if message.columns != columns or not 1 <= message.rows <= MAX_ROWS:
        raise InvalidArgument(f"{field_name}: expected 1 to {MAX_ROWS} rows of {columns} columns, "
                              f"got {message.rows}×{message.columns}")
    per_row = math.ceil(columns / 8)
    if len(message.bits) != message.rows * per_row:
        raise InvalidArgument(f"{field_name}: {len(message.bits)} bytes do not hold {message.rows} packed rows "
                              f"of {columns} bits")
    packed = np.frombuffer(message.bits, dtype=np.uint8).reshape(message.rows, per_row)
    return np.unpackbits(packed, axis=1, count=columns)


def masked_batch_request(job: ScoringJob) -> bpb.MaskedBatchRequest:
    """Encode ``job`` with its preprocessed image (client side)."""
    _, channels, height, width = job.image.shape
    request = bpb.MaskedBatchRequest(
        preprocessed_image=bpb.PreprocessedImage(
            channels=channels, height=height, width=width,
            float32_data=job.image.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()),
        masking=MASKING_ENUMS[job.masking], labels=job.labels or (),
    )
    if job.rows is not None and job.segments is not None:
        request.segments.CopyFrom(segments_message(job.segments))
        request.keep.CopyFrom(pack_rows(job.rows))
    else:
        assert job.masks is not None
        request.masks.CopyFrom(pack_rows(job.masks.reshape(len(job.masks), -1).astype(np.uint8)))
    return request


def _image(request: bpb.MaskedBatchRequest, model: LoadedModel) -> torch.Tensor:
    height, width = model.input_size
    if request.WhichOneof("image") == "encoded_image":
        return model.preprocess(image_from(request.encoded_image, "encoded_image")).unsqueeze(0)
    if request.WhichOneof("image") is None:
        raise InvalidArgument("image: give encoded_image or preprocessed_image")
    message = request.preprocessed_image
    if (message.channels, message.height, message.width) != (3, height, width):
        raise InvalidArgument(f"preprocessed_image: is {message.channels}×{message.height}×{message.width}, "
                              f"expected 3×{height}×{width}")
    if len(message.float32_data) != 4 * 3 * height * width:
        raise InvalidArgument(f"preprocessed_image: {len(message.float32_data)} bytes do not hold "
                              f"3×{height}×{width} float32 values")
    values = np.frombuffer(message.float32_data, dtype="<f4").reshape(1, 3, height, width)
    if not np.isfinite(values).all():
        raise InvalidArgument("preprocessed_image: holds NaN or infinite values")
    return torch.from_numpy(values.astype(np.float32))


def scoring_job(request: bpb.MaskedBatchRequest, model: LoadedModel) -> ScoringJob:
    """Decode and check ``request`` for ``model`` (handler side); ``InvalidArgument`` names the bad field."""
    image = _image(request, model)
    masking = masking_name(request.masking)
    height, width = model.input_size
    labels = tuple(request.labels) or None
    if request.HasField("masks"):
        if request.HasField("keep") or request.HasField("segments"):
            raise InvalidArgument("masks: give either masks, or segments with keep, not both")
        masks = unpack_rows(request.masks, "masks", height * width).reshape(-1, height, width)
        job = ScoringJob(image, masking, masks=masks, labels=labels)
    else:
        if not (request.HasField("keep") and request.HasField("segments")):
            raise InvalidArgument("keep: give segments with keep rows, or masks")
        segments = segments_from(request.segments, "segments", max_pixels=height * width)
        if segments.shape != (height, width):
            raise InvalidArgument(f"segments: is {segments.shape[0]}×{segments.shape[1]}, expected the model's "
                                  f"input size {height}×{width}")
        rows = unpack_rows(request.keep, "keep", int(segments.max()) + 1)
        job = ScoringJob(image, masking, segments=segments, rows=rows, labels=labels)
    try:
        job.check(model.input_size, model.num_classes)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None
    return job


def masked_batch_response(probabilities: np.ndarray, labels: tuple[int, ...] | None) -> bpb.MaskedBatchResponse:
    return bpb.MaskedBatchResponse(rows=len(probabilities), labels=labels or (),
                                   probabilities=probabilities.astype("<f4").tobytes())


def probabilities_from(response: bpb.MaskedBatchResponse, rows: int, columns: int) -> np.ndarray:
    """The rows × columns probabilities of ``response`` as float64; ``ValueError`` if it does not fit."""
    if response.rows != rows or len(response.probabilities) != 4 * rows * columns:
        raise ValueError(f"the masked-batch response holds {len(response.probabilities)} bytes for {response.rows} "
                         f"rows; expected {rows}×{columns} float32 values")
    return np.frombuffer(response.probabilities, dtype="<f4").reshape(rows, columns).astype(np.float64)


def model_description(model: LoadedModel) -> bpb.ModelDescription:
    p = model.preprocessing
    return bpb.ModelDescription(
        name=model.name, format=model.format, input_height=p.input_size[0], input_width=p.input_size[1],
        resize_size=p.resize_size, mean=p.mean, std=p.std, interpolation=p.interpolation.value,
        class_names=model.class_names, strategies=[MASKING_ENUMS[s] for s in MASKING_STRATEGIES],
    )


def described_model(message: bpb.ModelDescription) -> LoadedModel:
    """A :class:`LoadedModel` with the served model's preprocessing and classes, and no network."""
    preprocessing = Preprocessing(
        input_size=(message.input_height, message.input_width), resize_size=message.resize_size,
        mean=tuple(message.mean), std=tuple(message.std),
        interpolation=TF.InterpolationMode(message.interpolation),
    )
    return LoadedModel(message.name, None, preprocessing, list(message.class_names))
