"""The masked-batch wire format (``protos/layermask/v1/backend.proto``), both ways.

The service's TorchServe backend encodes a :class:`~layermask.explanation.scoring.ScoringJob` as a
``MaskedBatchRequest``; the TorchServe handler decodes it back, checking every field, and answers
with a ``MaskedBatchResponse``. ``ModelDescription`` tells the service the served model's
preprocessing and class names.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from layermask.explanation.scoring import ScoringJob
from layermask.masking.names import MASKING_STRATEGIES
from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import LoadedModel
from layermask_service.errors import InvalidArgument
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.torchserve.context_cache import ContextCache, ExplanationContext, UnknownContext, context_digest
from layermask_service.translate import MASKING_ENUMS, image_from, masking_name, segments_from, segments_message

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


def with_context_digest(request: bpb.MaskedBatchRequest) -> bpb.MaskedBatchRequest:
    """Mark a full keep-rows ``request`` with the digest of its image and segments (see ``context_cache``)."""
    request.context_digest = context_digest(request.preprocessed_image.float32_data, request.segments.zlib_uint16)
    return request


def digest_only_request(job: ScoringJob, digest: str) -> bpb.MaskedBatchRequest:
    """``job``'s keep rows and labels, naming its image and segments by the ``digest`` sent before."""
    assert job.rows is not None, "only keep-row jobs share an image and segments between requests"
    return bpb.MaskedBatchRequest(masking=MASKING_ENUMS[job.masking], keep=pack_rows(job.rows),
                                  labels=job.labels or (), context_digest=digest)


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


def _explanation_context(request: bpb.MaskedBatchRequest, model: LoadedModel,
                         contexts: ContextCache | None) -> tuple[torch.Tensor, np.ndarray]:
    """The image and segments of a keep-rows request: sent in it (and then cached under its
    ``context_digest``, if any), or named by its ``context_digest`` alone."""
    digest = request.context_digest
    if digest and request.WhichOneof("image") is None and not request.HasField("segments"):
        cached = contexts.get(digest) if contexts is not None else None
        if cached is None:
            raise UnknownContext(f"context_digest: {digest[:16]}… is not held by this worker; repeat the request "
                                 "with the image and segments")
        return cached.image, cached.segments
    if not request.HasField("segments"):
        raise InvalidArgument("keep: give segments with keep rows, or masks")
    image = _image(request, model)
    height, width = model.input_size
    segments = segments_from(request.segments, "segments", max_pixels=height * width)
    if segments.shape != (height, width):
        raise InvalidArgument(f"segments: is {segments.shape[0]}×{segments.shape[1]}, expected the model's "
                              f"input size {height}×{width}")
    if digest:
        if request.WhichOneof("image") != "preprocessed_image":
            raise InvalidArgument("context_digest: only a preprocessed_image with its segments can be named")
        if context_digest(request.preprocessed_image.float32_data, request.segments.zlib_uint16) != digest:
            raise InvalidArgument("context_digest: is not the SHA-256 of the image and segments sent with it")
        if contexts is not None:
            contexts.put(digest, ExplanationContext(image, segments))
    return image, segments


def scoring_job(request: bpb.MaskedBatchRequest, model: LoadedModel,
                contexts: ContextCache | None = None) -> ScoringJob:
    """Decode and check ``request`` for ``model`` (handler side); ``InvalidArgument`` names the bad field.

    ``contexts`` holds the images and segments sent earlier with a ``context_digest``;
    :class:`~layermask_service.torchserve.context_cache.UnknownContext` if the request names one it lacks.
    """
    masking = masking_name(request.masking)
    height, width = model.input_size
    labels = tuple(request.labels) or None
    if request.HasField("masks"):
        if request.HasField("keep") or request.HasField("segments") or request.context_digest:
            raise InvalidArgument("masks: give either masks, or segments with keep, not both")
        masks = unpack_rows(request.masks, "masks", height * width).reshape(-1, height, width)
        job = ScoringJob(_image(request, model), masking, masks=masks, labels=labels)
    else:
        if not request.HasField("keep"):
            raise InvalidArgument("keep: give segments with keep rows, or masks")
        image, segments = _explanation_context(request, model, contexts)
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


# ModelDescription holds Preprocessing.to_dict()'s entries under the same names, but input_size as
# input_height and input_width.
_PREPROCESSING_FIELDS = tuple(f.name for f in dataclasses.fields(Preprocessing) if f.name != "input_size")


def model_description(model: LoadedModel, weights_digest: str = "") -> bpb.ModelDescription:
    preprocessing = model.preprocessing.to_dict()
    height, width = preprocessing.pop("input_size")
    return bpb.ModelDescription(
        name=model.name, format=model.format, input_height=height, input_width=width, class_names=model.class_names,
        strategies=[MASKING_ENUMS[s] for s in MASKING_STRATEGIES], weights_digest=weights_digest, **preprocessing,
    )


def described_model(message: bpb.ModelDescription) -> LoadedModel:
    """A :class:`LoadedModel` with the served model's preprocessing and classes, and no network."""
    preprocessing = {name: getattr(message, name) for name in _PREPROCESSING_FIELDS}
    preprocessing["input_size"] = (message.input_height, message.input_width)
    return LoadedModel(message.name, None, Preprocessing.from_dict(preprocessing), list(message.class_names))
