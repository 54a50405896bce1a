"""Occlusion on the keep-row engine: equal to captum's Occlusion with grey masking, and for every strategy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data

import layermask
from layermask.explanation.occlusion import occlusion_cells, window_rows, window_starts
from layermask.explanation.options import OcclusionWindow
from layermask.models.preprocessing import Preprocessing
from tests.helpers.tiny_model import tiny_model as tiny_classifier

SIZE = 64


@pytest.fixture(scope="module")
def tiny_model() -> layermask.LoadedModel:
    return tiny_classifier(Preprocessing(input_size=(SIZE, SIZE), resize_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3))


@pytest.fixture(scope="module")
def split_image() -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[:, : SIZE // 2] = 255
    return image


def _captum_occlusion(network: torch.nn.Module, tensor: torch.Tensor, label: int, window: int,
                      stride: int) -> np.ndarray:
    captum_attr = pytest.importorskip("captum.attr")

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return network(x).softmax(dim=-1)

    occlusion = captum_attr.Occlusion(probabilities)
    attribution = occlusion.attribute(tensor, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                      baselines=0, target=label, perturbations_per_eval=32)
    channels = attribution[0].double().numpy()
    assert np.allclose(channels[0], channels[1:])  # the window spans all channels
    return channels[0]


@pytest.mark.slow  # Lite0 scores 170 windows twice: ~20 s on 2 cores
def test_equals_captum_occlusion_with_grey(default_model: layermask.LoadedModel) -> None:
    photo = data.chelsea()
    explanation = layermask.explain(default_model, photo, method="occlusion", masking="grey",
                                    occlusion={"window": 32, "stride": 16})
    label = explanation.labels[0]
    assert explanation.method == "occlusion" and explanation.segmentation == "occlusion"
    assert explanation.num_samples == 13 * 13 + 1 and explanation.num_segments == 14 * 14
    tensor = default_model.preprocess(photo).unsqueeze(0)
    expected = _captum_occlusion(default_model.torch_network(), tensor, label, 32, 16)
    heatmap = explanation.heatmap(label).astype(np.float64)
    np.testing.assert_allclose(heatmap, expected, rtol=0, atol=1e-5)
    assert np.abs(expected).max() > 0.01
    result = explanation.explanations[label]
    assert result.intercept == result.local_prediction == pytest.approx(explanation.top_predictions[0].probability)


def test_equals_captum_where_captum_covers_the_crop(tiny_model: layermask.LoadedModel) -> None:
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for window, stride in [(16, 8), (8, 8), (24, 20)]:  # 64 − window a multiple of the stride
        explanation = layermask.explain(tiny_model, photo, method="occlusion", masking="grey",
                                        occlusion=OcclusionWindow(window, stride), labels=[2])
        tensor = tiny_model.preprocess(photo).unsqueeze(0)
        expected = _captum_occlusion(tiny_model.torch_network(), tensor, 2, window, stride)
        np.testing.assert_allclose(explanation.heatmap(2), expected, rtol=0, atol=1e-6)


def test_windows_cover_every_pixel() -> None:
    assert window_starts(224, 32, 16).tolist() == list(range(0, 193, 16))  # captum's positions
    assert window_starts(100, 30, 16).tolist() == [0, 16, 32, 48, 64, 70]  # the last flush with the edge
    assert window_starts(10, 10, 3).tolist() == [0]
    settings = OcclusionWindow(30, 16)
    cells, rows = occlusion_cells((100, 90), settings), window_rows((100, 90), settings)
    assert cells.shape == (100, 90) and rows[0].all() and len(rows) == 6 * 5 + 1
    hidden = 1 - rows[1:, cells]  # windows × H × W
    assert (hidden.sum(axis=0) > 0).all()
    assert (hidden.sum(axis=(1, 2)) == 30 * 30).all()  # each row hides exactly one window


@pytest.mark.parametrize("masking", layermask.MASKING_STRATEGIES)
def test_every_strategy(tiny_model: layermask.LoadedModel, split_image: np.ndarray, masking: str) -> None:
    explanation = layermask.explain(tiny_model, split_image, method="occlusion", masking=masking,
                                    occlusion={"window": 16, "stride": 8}, labels=[0])
    heatmap = explanation.heatmap(0)
    assert heatmap.shape == (SIZE, SIZE) and np.isfinite(heatmap).all()
    assert heatmap[:, :24].mean() > heatmap[:, 40:].mean()  # hiding the bright half lowers "bright"
    assert explanation.explanations[0].score == 1.0 and explanation.converged is None
    record = json.loads(explanation.to_json())
    assert record["method"] == "occlusion" and record["segmentation_params"] == {"window": 16, "stride": 8}
    assert "occlusion" in repr(explanation)
    explanation.overlay(on="original")


def test_bad_windows(tiny_model: layermask.LoadedModel, split_image: np.ndarray) -> None:
    with pytest.raises(layermask.InvalidOptionError, match=r"^occlusion\.window: must be at most"):
        layermask.explain(tiny_model, split_image, method="occlusion", occlusion={"window": 65})
    with pytest.raises(layermask.InvalidOptionError, match=r"^occlusion\.stride: 1 with window 3 makes 49284 windows"):
        layermask.explain(tiny_classifier(), split_image, method="occlusion", occlusion={"window": 3, "stride": 1})
    with pytest.raises(layermask.InvalidOptionError, match=r"^perturbations: "):
        layermask.explain(tiny_model, split_image, method="occlusion", perturbations=np.ones((4, 4)))
