"""The masked-batch wire format: a round trip keeps the job, and every malformed field is named."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import layermask
from layermask.explanation.scoring import ScoringJob
from layermask.models.preprocessing import Preprocessing
from layermask_service.errors import InvalidArgument
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.torchserve.messages import (
    described_model,
    masked_batch_request,
    model_description,
    pack_rows,
    scoring_job,
)

SIZE = 224


def _job(**overrides: object) -> ScoringJob:
    rng = np.random.default_rng(0)
    arguments: dict[str, object] = dict(
        image=torch.from_numpy(rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)), masking="blur",
        segments=(np.arange(SIZE * SIZE).reshape(SIZE, SIZE) // 5018).astype(np.int64),
        rows=rng.integers(0, 2, (5, 10), dtype=np.uint8), labels=(3, 999))
    arguments.update(overrides)
    return ScoringJob(**arguments)  # type: ignore[arg-type]


def test_a_round_trip_keeps_the_job(default_model: layermask.LoadedModel) -> None:
    job = _job()
    decoded = scoring_job(bpb.MaskedBatchRequest.FromString(masked_batch_request(job).SerializeToString()),
                          default_model)
    assert torch.equal(decoded.image, job.image) and decoded.masking == "blur" and decoded.labels == (3, 999)
    assert np.array_equal(decoded.segments, job.segments) and np.array_equal(decoded.rows, job.rows)
    masks = np.random.default_rng(1).integers(0, 2, (3, SIZE, SIZE), dtype=np.uint8)
    explicit = scoring_job(masked_batch_request(_job(segments=None, rows=None, masks=masks, labels=None)),
                           default_model)
    assert np.array_equal(explicit.masks, masks) and explicit.labels is None


UNUSUAL = Preprocessing(input_size=(96, 128), resize_size=150, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                        interpolation=TF.InterpolationMode.BICUBIC)


def test_the_model_description_round_trips(default_model: layermask.LoadedModel) -> None:
    described = described_model(model_description(default_model))
    assert described.preprocessing == default_model.preprocessing
    assert described.class_names == default_model.class_names and described.network is None
    unusual = layermask.LoadedModel("unusual", None, UNUSUAL, ["a", "b"])
    message = model_description(unusual)
    assert (message.input_height, message.input_width, message.interpolation) == (96, 128, "bicubic")
    assert described_model(bpb.ModelDescription.FromString(message.SerializeToString())).preprocessing == UNUSUAL


def test_preprocessing_round_trips_through_its_dictionary() -> None:
    for preprocessing in (Preprocessing(), UNUSUAL):
        assert Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict()))) == preprocessing
    good = UNUSUAL.to_dict()
    for broken, message in [({k: v for k, v in good.items() if k != "std"}, "missing ['std']"),
                            ({**good, "crop": 0.9}, "unknown ['crop']"), ({**good, "mean": [0.5]}, "three values"),
                            ({**good, "interpolation": "sharp"}, "'sharp' is not a valid InterpolationMode")]:
        with pytest.raises(ValueError, match=f"^preprocessing: .*{re.escape(message)}"):
            Preprocessing.from_dict(broken)


def _broken(field: str) -> bpb.MaskedBatchRequest:
    request = masked_batch_request(_job())
    if field == "preprocessed_image":
        request.preprocessed_image.float32_data = np.full(3 * SIZE * SIZE, np.nan, dtype="<f4").tobytes()
    elif field == "image":
        request.ClearField("preprocessed_image")
    elif field == "encoded_image":
        request.encoded_image = b"GIF89a not an allowed image"
    elif field == "segments":
        request.segments.zlib_uint16 = zlib.compress(bytes(2 * SIZE * SIZE * 50))  # 50 times too many labels
    elif field == "keep":
        request.keep.bits = request.keep.bits[:-1]
    elif field == "masks":
        request.ClearField("segments")
        request.ClearField("keep")
        request.masks.CopyFrom(pack_rows(np.ones((2, 100), dtype=np.uint8)))
    elif field == "labels":
        request.labels.append(1000)
    return request


@pytest.mark.parametrize("field", ["preprocessed_image", "image", "encoded_image", "segments", "keep", "masks",
                                   "labels"])
def test_every_malformed_field_is_named(field: str, default_model: layermask.LoadedModel) -> None:
    with pytest.raises(InvalidArgument, match=f"^{field}: "):
        scoring_job(_broken(field), default_model)
