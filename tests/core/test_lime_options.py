"""ExplainOptions: every field checked once, at construction, naming the field; the model's checks; overrides."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

import layermask
from layermask import ExplainOptions, InvalidOptionError
from layermask.explanation.lime import explain, plan_explanation
from layermask.explanation.scoring import LocalScorer, ScoringJob
from layermask.models.preprocessing import Preprocessing


class MeanColour(nn.Module):
    """Three classes scored by the mean of each colour channel over the visible pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 4.0


@pytest.fixture(scope="module")
def colour_model() -> layermask.LoadedModel:
    preprocessing = Preprocessing(input_size=(32, 32), resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    return layermask.LoadedModel("colour", MeanColour().eval(), preprocessing, ["red", "green", "blue"])


@pytest.fixture(scope="module")
def quadrants() -> np.ndarray:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:16, :16, 0] = image[16:, 16:, 2] = 255
    return image


def test_defaults_are_completed_and_normalised() -> None:
    options = ExplainOptions(segmentation="slic", segmentation_params={"n_segments": "40"}, labels=[np.int64(2), 0],
                             num_samples=np.int32(50), keep_probability=1)
    assert options.segmentation_params == {"n_segments": 40, "compactness": 10.0, "sigma": 1.0}
    assert options.labels == (2, 0) and type(options.num_samples) is int and options.keep_probability == 1.0
    assert options.masking == "layer" and options.segmentation_method == "slic"
    assert ExplainOptions(segmentation=np.zeros((4, 4), dtype=np.int16)).segmentation_method == "label_map"


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"masking": "pink"}, "masking", "unknown strategy 'pink'; choose one of layer, grey, black, blur"),
    ({"segmentation": "watershed"}, "segmentation", "unknown segmentation 'watershed'"),
    ({"segmentation": 3}, "segmentation", "must be a method name or a label map, got int"),
    ({"segmentation": np.zeros((4, 4))}, "segmentation", "a label map must be a 2-D array of integers"),
    ({"segmentation": np.zeros((4, 4), dtype=int), "segmentation_params": {"sigma": 1}}, "segmentation_params",
     "a label map takes no segmentation parameters"),
    ({"segmentation": "slic", "segmentation_params": {"n_segments": 2.5}}, "segmentation_params",
     "slic parameter n_segments must be int, got 2.5"),
    ({"segmentation": "grid", "segmentation_params": {"patch": 8}}, "segmentation_params", "unknown grid parameter"),
    ({"max_segments": 1}, "max_segments", "must be an integer of at least 2, got 1"),
    ({"num_samples": 1}, "num_samples", "must be an integer of at least 2 or 'auto', got 1"),
    ({"num_samples": 10.0}, "num_samples", "must be an integer of at least 2 or 'auto', got 10.0"),
    ({"num_samples": True}, "num_samples", "must be an integer of at least 2 or 'auto', got True"),
    ({"keep_probability": 0.0}, "keep_probability", "must be in (0, 1], got 0.0"),
    ({"keep_probability": float("nan")}, "keep_probability", "must be a finite number, got nan"),
    ({"kernel_width": 0}, "kernel_width", "must be positive, got 0"),
    ({"kernel_width": "wide"}, "kernel_width", "must be a finite number, got 'wide'"),
    ({"labels": []}, "labels", "must not be empty"),
    ({"labels": 3}, "labels", "must be a sequence of class indices or None, got 3"),
    ({"labels": [1, -2]}, "labels", "must be non-negative class indices, got [1, -2]"),
    ({"labels": [1, 1]}, "labels", "must be distinct, got [1, 1]"),
    ({"top_labels": 0}, "top_labels", "must be an integer of at least 1, got 0"),
    ({"seed": -1}, "seed", "must be a non-negative integer, got -1"),
    ({"batch_size": 0}, "batch_size", "must be a positive integer, got 0"),
])
def test_each_bad_field_is_named(fields: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(InvalidOptionError) as raised:
        ExplainOptions(**fields)  # type: ignore[arg-type]
    assert raised.value.field == field and raised.value.reason.startswith(message)
    assert str(raised.value) == f"{field}: {raised.value.reason}" and isinstance(raised.value, ValueError)


def test_the_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(InvalidOptionError("seed", "must be a non-negative integer, got -1")))
    assert (error.field, str(error)) == ("seed", "seed: must be a non-negative integer, got -1")


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"labels": [0, 3, 7]}, "labels", "[3, 7] out of range for a model with 3 classes"),
    ({"top_labels": 4}, "top_labels", "must be at most 3 for a model with 3 classes, got 4"),
])
def test_the_model_checks(colour_model: layermask.LoadedModel, fields: dict[str, object], field: str,
                          message: str) -> None:
    options = ExplainOptions(**fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError) as raised:
        options.check_model(colour_model)
    assert raised.value.field == field and raised.value.reason == message
    ExplainOptions(labels=[2, 0], top_labels=4).check_model(colour_model)  # top_labels is unused with labels


def test_options_and_overrides_give_the_same_explanation(colour_model: layermask.LoadedModel,
                                                         quadrants: np.ndarray) -> None:
    options = ExplainOptions(masking="grey", segmentation="grid", segmentation_params={"patch_size": 8},
                             num_samples=60, seed=4, labels=[2, 0])
    given = explain(colour_model, quadrants, options)
    keywords = explain(colour_model, quadrants, masking="grey", segmentation="grid",
                       segmentation_params={"patch_size": 8}, num_samples=60, seed=4, labels=[2, 0])
    overridden = explain(colour_model, quadrants, options.replace(seed=0), seed=4)
    for other in (keywords, overridden):
        assert other.labels == given.labels == [2, 0] and other.masking == "grey"
        for label in given.labels:
            assert np.array_equal(other.explanations[label].weights, given.explanations[label].weights)
    assert given.segmentation_params == {"patch_size": 8}


def test_a_new_segmentation_starts_from_its_own_defaults() -> None:
    options = ExplainOptions(segmentation="slic", segmentation_params={"n_segments": 20})
    assert options.replace(segmentation="grid").segmentation_params == {"patch_size": 16}
    with pytest.raises(TypeError):
        options.replace(samples=10)


def test_a_label_map_drawn_on_the_original_image_is_cropped_like_it(colour_model: layermask.LoadedModel) -> None:
    photo = np.zeros((64, 96, 3), dtype=np.uint8)  # resized to 32×48, then its centre 32×32 is cropped
    columns = np.arange(96)[None, :].repeat(64, axis=0)
    plan = plan_explanation(colour_model, photo, segmentation=(columns >= 48).astype(np.int32), num_samples=4)
    assert np.array_equal(plan.segments, (np.arange(32)[None, :] >= 16).repeat(32, axis=0))
    with pytest.raises(InvalidOptionError, match=r"^segmentation: shape \(10, 10\) matches neither the image "
                                                 r"\(64, 96\) nor the model's input size \(32, 32\)"):
        plan_explanation(colour_model, photo, segmentation=np.zeros((10, 10), dtype=np.int32))


def test_bad_options_stop_before_the_model_runs(colour_model: layermask.LoadedModel, quadrants: np.ndarray) -> None:
    scored: list[ScoringJob] = []
    local = LocalScorer(colour_model, 32)

    def scorer(job: ScoringJob) -> np.ndarray:
        scored.append(job)
        return local(job)

    with pytest.raises(InvalidOptionError, match=r"^labels: "):
        explain(colour_model, quadrants, labels=[5], segmentation="grid", scorer=scorer)
    with pytest.raises(InvalidOptionError, match=r"^segmentation: the segmentation has a single segment"):
        explain(colour_model, quadrants, segmentation="grid", segmentation_params={"patch_size": 32}, scorer=scorer)
    assert scored == []
    explain(colour_model, quadrants, segmentation="grid", num_samples=8, scorer=scorer)
    assert len(scored) == 2  # the unmasked image, then one batch of eight rows
