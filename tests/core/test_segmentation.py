"""Segmentation methods, their parameters, and degenerate results."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from layermask.explanation.segmentation import SEGMENTATIONS, segment, segmentation_parameters


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()[::2, ::2].copy()  # 256×256×3 uint8


@pytest.mark.parametrize("method", SEGMENTATIONS)
def test_each_method_gives_consecutive_labels(photo: np.ndarray, method: str) -> None:
    labels = segment(photo, method)
    assert labels.shape == photo.shape[:2] and labels.dtype == np.int32
    assert labels.min() == 0 and set(np.unique(labels)) == set(range(labels.max() + 1))
    assert labels.max() + 1 >= 2


def test_quickshift_defaults_match_lime() -> None:
    assert segmentation_parameters("quickshift") == {"kernel_size": 4.0, "max_dist": 200.0, "ratio": 0.2, "sigma": 0.0}


def test_parameters_change_the_result(photo: np.ndarray) -> None:
    assert segment(photo, "slic", {"n_segments": 20}).max() < segment(photo, "slic", {"n_segments": 200}).max()
    assert segment(photo, "grid", {"patch_size": 32}).max() + 1 == 64
    assert segment(photo, "grid").max() + 1 == 256  # 16×16 patches by default


@pytest.mark.parametrize(("method", "params", "message"), [
    ("slic", {"n_segments": 1}, "n_segments must be at least 2"),
    ("slic", {"n_segments": 2.5}, "n_segments must be int"),
    ("slic", {"compactness": -1}, "compactness must be positive"),
    ("quickshift", {"max_dist": "far"}, "max_dist must be float"),
    ("quickshift", {"ratio": float("nan")}, "ratio must be finite"),
    ("felzenszwalb", {"min_size": 0}, "min_size must be at least 1"),
    ("grid", {"patch": 8}, "unknown grid parameter"),
    ("watershed", {}, "unknown segmentation 'watershed'"),
])
def test_bad_parameters_are_named(photo: np.ndarray, method: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment(photo, method, params)


def test_client_label_map_is_relabelled(photo: np.ndarray) -> None:
    label_map = np.where(np.arange(256)[None, :] < 100, 7, 42).repeat(256, axis=0)
    labels = segment(photo, label_map)
    assert labels.max() == 1 and labels[0, 0] == 0 and labels[0, 255] == 1


@pytest.mark.parametrize(("label_map", "message"), [
    (np.zeros((10, 10), dtype=np.int64), "does not match the image"),
    (np.zeros((256, 256), dtype=np.float32), "must hold integers"),
    (np.zeros((256, 256), dtype=np.int64), "single segment"),
])
def test_bad_label_maps_are_refused(photo: np.ndarray, label_map: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment(photo, label_map)


def test_too_many_segments_is_refused(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1024 segments, more than the maximum of 1000"):
        segment(photo, "grid", {"patch_size": 8})
    assert segment(photo, "grid", {"patch_size": 8}, max_segments=2000).max() == 1023
