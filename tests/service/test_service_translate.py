"""Translating an ExplainRequest: one ExplainOptions per request, the proto's names for its fields."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from skimage import data

import layermask
from layermask import ExplainOptions, InvalidOptionError
from layermask_service.errors import InvalidArgument
from layermask_service.proto import explain_pb2 as pb
from layermask_service.translate import (
    MASKING_ENUMS,
    MASKING_NAMES,
    SCALAR_OPTIONS,
    HeatmapChoice,
    explain_job,
    explain_response,
    option_error,
    segmentation_from,
)
from tests.helpers.service import png_bytes
from tests.helpers.tiny_model import tiny_model

CHELSEA = png_bytes(data.chelsea())


def test_every_core_strategy_has_a_proto_enum_value_and_back() -> None:
    assert set(MASKING_ENUMS) == set(layermask.MASKING_STRATEGIES)
    for name in layermask.MASKING_STRATEGIES:
        assert MASKING_NAMES[MASKING_ENUMS[name]] == name
        assert pb.Masking.Name(MASKING_ENUMS[name]) == f"MASKING_{name.upper()}"
    assert set(MASKING_NAMES) == set(pb.Masking.values())  # no proto value without a strategy
    assert MASKING_NAMES[pb.MASKING_UNSPECIFIED] == ExplainOptions().masking


def test_unset_fields_take_the_core_defaults() -> None:
    job = explain_job(pb.ExplainRequest(image=CHELSEA), "efficientnet_lite0", max_samples=20_000)
    assert job.options == ExplainOptions() and job.model == "efficientnet_lite0"
    assert job.segmentation.field == "segmentation"


def test_set_fields_reach_the_options() -> None:
    request = pb.ExplainRequest(image=CHELSEA, model="m", masking=pb.MASKING_BLUR, num_samples=64,
                                keep_probability=0.25, kernel_width=0.5, seed=9, labels=[7, 3],
                                segmentation=pb.Segmentation(slic=pb.Slic(n_segments=30)))
    options = explain_job(request, "efficientnet_lite0", max_samples=100).options
    assert options == ExplainOptions(masking="blur", segmentation="slic", segmentation_params={"n_segments": 30},
                                     num_samples=64, keep_probability=0.25, kernel_width=0.5, seed=9, labels=[7, 3])
    label_map = pb.Segmentation(label_map=pb.LabelMap(height=2, width=3, labels=[0, 1, 1, 0, 2, 2]))
    mapped = explain_job(pb.ExplainRequest(image=CHELSEA, top_labels=2, segmentation=label_map), "m", 2000).options
    assert isinstance(mapped.segmentation, np.ndarray) and mapped.segmentation.tolist() == [[0, 1, 1], [0, 2, 2]]
    assert mapped.top_labels == 2 and mapped.labels is None


@pytest.mark.parametrize(("request_", "message"), [
    (pb.ExplainRequest(image=CHELSEA, num_samples=1), "num_samples: must be 0 (adaptive) or at least 2, got 1"),
    (pb.ExplainRequest(image=CHELSEA, num_samples=1001), "num_samples: must be at most 1000 on this server, got 1001"),
    (pb.ExplainRequest(image=CHELSEA, kernel_width=float("inf")), "kernel_width: must be a finite number"),
    (pb.ExplainRequest(image=CHELSEA, labels=[2, 2]), "labels: must be distinct"),
    (pb.ExplainRequest(image=CHELSEA, labels=[-1]), "labels: must be non-negative class indices"),
    (pb.ExplainRequest(image=CHELSEA, labels=[1], top_labels=1), "labels: give either labels or top_labels"),
    (pb.ExplainRequest(image=CHELSEA, segmentation=pb.Segmentation(grid=pb.Grid(patch_size=0))),
     "segmentation.grid: grid parameter patch_size must be at least 1, got 0"),
    (pb.ExplainRequest(image=CHELSEA, segmentation=pb.Segmentation(felzenszwalb=pb.Felzenszwalb(scale=-1))),
     "segmentation.felzenszwalb: felzenszwalb parameter scale must be positive"),
    (pb.ExplainRequest(image=b"GIF89a"), "image: "),
])
def test_a_bad_field_is_named_as_in_the_proto(request_: pb.ExplainRequest, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        explain_job(request_, "m", max_samples=1000)
    assert str(raised.value).startswith(message)


def test_an_option_no_request_field_sets_is_not_the_callers_error() -> None:
    segmentation = segmentation_from(pb.Segmentation(slic=pb.Slic()), "segment_keep.segmentation")
    assert str(option_error(InvalidOptionError("segmentation", "one segment"), segmentation)) == \
        "segment_keep.segmentation.slic: one segment"
    assert isinstance(option_error(InvalidOptionError("top_labels", "too many"), segmentation), InvalidArgument)
    server_setting = InvalidOptionError("batch_size", "must be a positive integer, got 0")
    assert option_error(server_setting, segmentation) is server_setting


def test_the_scalar_options_are_the_optional_request_fields() -> None:
    option_names = {f.name for f in dataclasses.fields(ExplainOptions)}
    assert set(SCALAR_OPTIONS) == {"num_samples", "keep_probability", "kernel_width", "seed", "top_labels"}
    assert set(SCALAR_OPTIONS) <= option_names


def test_the_heatmap_view_is_read_and_checked() -> None:
    unset = explain_job(pb.ExplainRequest(image=CHELSEA), "m", max_samples=20_000)
    assert unset.heatmap_format == HeatmapChoice(pb.HEATMAP_FORMAT_NONE, pb.HEATMAP_VIEW_CROP)  # the old answer
    chosen = explain_job(pb.ExplainRequest(image=CHELSEA, heatmap_format=pb.HEATMAP_FORMAT_FLOAT16,
                                           heatmap_view=pb.HEATMAP_VIEW_ORIGINAL), "m", max_samples=20_000)
    assert chosen.heatmap_format.on == "original"
    with pytest.raises(InvalidArgument, match=r"^heatmap_view: unknown view 7"):
        explain_job(pb.ExplainRequest(image=CHELSEA, heatmap_view=7), "m", max_samples=20_000)  # type: ignore[arg-type]


def test_heatmaps_follow_the_view() -> None:
    explanation = layermask.explain(tiny_model(), data.chelsea(), segmentation="grid", num_samples=8, masking="grey")
    crop = explain_response(explanation, HeatmapChoice(pb.HEATMAP_FORMAT_FLOAT16, pb.HEATMAP_VIEW_CROP), 0.0)
    assert (crop.heatmaps[0].height, crop.heatmaps[0].width) == (224, 224)
    assert explain_response(explanation, pb.HEATMAP_FORMAT_FLOAT16, 0.0) == crop  # a bare format: the crop
    original = explain_response(explanation, HeatmapChoice(pb.HEATMAP_FORMAT_FLOAT16, pb.HEATMAP_VIEW_ORIGINAL), 0.0)
    heatmap = original.heatmaps[0]
    values = np.frombuffer(heatmap.data, dtype="<f2").reshape(heatmap.height, heatmap.width)
    assert values.shape == (300, 451)
    np.testing.assert_array_equal(np.isnan(values), np.isnan(explanation.heatmap(size="original")))
    assert np.isnan(values[:, 0]).all() and not np.isnan(values[150, 225])
    png = explain_response(explanation, HeatmapChoice(pb.HEATMAP_FORMAT_PNG_OVERLAY, pb.HEATMAP_VIEW_ORIGINAL), 0.0)
    assert png.heatmaps[0].data.startswith(b"\x89PNG") and png.heatmaps[0].width == 451
