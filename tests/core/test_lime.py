"""The LIME algorithm on a small model whose answer is known, and the Explanation it returns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics.pairwise import cosine_distances

import layermask
from layermask.explanation.lime import explain, rows_to_masks, sample_perturbations, sample_weights
from layermask.models.preprocessing import Preprocessing
from tests.helpers.tiny_model import tiny_model as tiny_classifier


@pytest.fixture(scope="module")
def tiny_model() -> layermask.LoadedModel:
    return tiny_classifier(Preprocessing(input_size=(64, 64), resize_size=64, mean=(0.5,) * 3, std=(0.5,) * 3))


@pytest.fixture(scope="module")
def split_image() -> np.ndarray:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :32] = 255  # +1 after normalisation on the left, −1 on the right
    return image


def test_weights_point_at_the_evidence(tiny_model: layermask.LoadedModel, split_image: np.ndarray) -> None:
    explanation = explain(tiny_model, split_image, segmentation="grid", segmentation_params={"patch_size": 16},
                          num_samples=300, seed=1)
    assert explanation.labels == [0] and explanation.top_predictions[0].name == "bright"
    columns = np.arange(16) % 4  # grid segments are numbered row by row, four per row
    weights = explanation.explanations[0].weights
    assert weights[columns < 2].min() > 0 > weights[columns >= 2].max()
    assert explanation.explanations[0].score > 0.5


def test_explicit_labels_keep_their_own_scores(tiny_model: layermask.LoadedModel, split_image: np.ndarray) -> None:
    explanation = explain(tiny_model, split_image, segmentation="grid", num_samples=200, labels=[2, 0])
    assert explanation.labels == [2, 0]
    left, right = explanation.explanations[0], explanation.explanations[2]
    assert np.allclose(left.weights, -right.weights, atol=0.2)
    assert left.score != right.score and left.local_prediction != right.local_prediction


def test_perturbations_sampling() -> None:
    rows = sample_perturbations(2000, 30, keep_probability=0.3, seed=5)
    assert rows.dtype == np.uint8 and rows[0].all()
    assert abs(rows[1:].mean() - 0.3) < 0.01
    assert np.array_equal(rows, sample_perturbations(2000, 30, keep_probability=0.3, seed=5))


def test_rows_become_pixel_masks() -> None:
    segments = torch.tensor([[0, 0, 1], [2, 2, 1]])
    masks = rows_to_masks(np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8), segments)
    assert masks.shape == (2, 1, 2, 3)
    assert masks[0, 0].tolist() == [[1, 1, 0], [1, 1, 0]] and masks[1, 0].tolist() == [[0, 0, 1], [0, 0, 1]]


def test_kernel_weights_follow_lime() -> None:
    rows = sample_perturbations(50, 12, 0.5, seed=0)
    rows[7] = 0  # an all-hidden row: cosine distance 1
    distances = cosine_distances(rows, np.ones((1, 12))).ravel()
    assert np.allclose(sample_weights(rows, 0.25), np.sqrt(np.exp(-(distances**2) / 0.25**2)))
    assert sample_weights(rows, 0.25)[0] == 1.0


def test_given_perturbations_are_used_as_is(tiny_model: layermask.LoadedModel, split_image: np.ndarray) -> None:
    rows = sample_perturbations(120, 16, 0.5, seed=9)
    a = explain(tiny_model, split_image, segmentation="grid", perturbations=rows, seed=1)
    b = explain(tiny_model, split_image, segmentation="grid", perturbations=rows, seed=2, masking="grey")
    same_rows = explain(tiny_model, split_image, segmentation="grid", num_samples=120, seed=9)
    own_rows = explain(tiny_model, split_image, segmentation="grid", num_samples=120, seed=1)
    assert a.num_samples == 120
    assert np.array_equal(a.explanations[0].weights, same_rows.explanations[0].weights)  # seed 1 was not used
    assert not np.allclose(a.explanations[0].weights, own_rows.explanations[0].weights)
    assert np.corrcoef(a.explanations[0].weights, b.explanations[0].weights)[0, 1] > 0.5


def test_progress_counts_up_and_can_cancel(tiny_model: layermask.LoadedModel, split_image: np.ndarray) -> None:
    seen: list[tuple[int, int]] = []
    explain(tiny_model, split_image, segmentation="grid", num_samples=100, batch_size=32,
            progress=lambda done, total: seen.append((done, total)))
    assert seen == [(32, 100), (64, 100), (96, 100), (100, 100)]

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        seen.append((done, total))
        raise Cancelled

    seen.clear()
    with pytest.raises(Cancelled):
        explain(tiny_model, split_image, segmentation="grid", num_samples=100, batch_size=32, progress=cancel)
    assert seen == [(32, 100)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_samples": 1}, "num_samples: must be an integer of at least 2 or 'auto', got 1"),
    ({"keep_probability": 0.0}, "keep_probability: "),
    ({"kernel_width": -1.0}, "kernel_width: "),
    ({"seed": -3}, "seed: "),
    ({"batch_size": 0}, "batch_size: "),
    ({"labels": [3]}, r"labels: \[3\] out of range for a model with 3 classes"),
    ({"labels": []}, "labels: must not be empty"),
    ({"top_labels": 4}, "top_labels: must be at most 3"),
    ({"masking": "pink"}, "masking: unknown strategy 'pink'"),
    ({"perturbations": np.ones((10, 5))}, "perturbations: must be samples × 16 segments"),
])
def test_bad_arguments(tiny_model: layermask.LoadedModel, split_image: np.ndarray, kwargs: dict[str, object],
                       message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}") as raised:
        explain(tiny_model, split_image, **{"segmentation": "grid", "num_samples": 20, **kwargs})  # type: ignore[arg-type]
    assert isinstance(raised.value, layermask.InvalidOptionError) and raised.value.field == next(iter(kwargs))


def test_explanation_outputs(tiny_model: layermask.LoadedModel, split_image: np.ndarray, tmp_path: Path) -> None:
    explanation = explain(tiny_model, split_image, segmentation="grid", num_samples=100, top_labels=2)
    heatmap = explanation.heatmap()
    assert heatmap.shape == (64, 64)
    assert heatmap[0, 0] == pytest.approx(explanation.explanations[0].weights[0])
    assert explanation.top_segments(k=2)[0][1] == explanation.explanations[0].weights.max()
    with pytest.raises(KeyError):
        explanation.heatmap(2)
    explanation.save_png(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    restored = json.loads(explanation.to_json(tmp_path / "x.json"))
    assert restored == json.loads((tmp_path / "x.json").read_text())
    assert restored["segmentation"] == "grid" and restored["seed"] == 0 and restored["num_samples"] == 100
    assert [e["label"] for e in restored["explanations"]] == [0, 1]
    assert np.array(restored["segments"]).shape == (64, 64)
    assert set(restored["timings"]) == {"segmentation", "inference", "fit"}
