"""Heatmaps and overlays on the photo as given: the crop's segments mapped back through the preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import layermask
from layermask.models.preprocessing import Preprocessing
from tests.helpers.tiny_model import tiny_model

# Worked out by hand for ImageNet's preprocessing (shorter side to 256, centre crop 224²): the photo
# rows and columns whose pixel centres land in the crop. A landscape 451×300 photo is resized to
# 384×256 and cropped at x 80…303, y 16…239; pixel x lands on resized column ⌊(x + ½)·384/451⌋.
CASES = {
    "landscape": ((300, 451), (19, 280), (94, 356)),
    "portrait": ((451, 300), (94, 356), (19, 280)),
}


def photo(size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def crop_grid() -> np.ndarray:
    """14×14 segments of 16×16 pixels on the 224² crop, numbered row by row."""
    rows, columns = np.indices((224, 224)) // 16
    return (rows * 14 + columns).astype(np.int64)


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[layermask.Explanation, tuple[int, int], tuple[int, int]]:
    size, rows, columns = CASES[request.param]
    explanation = layermask.explain(tiny_model(), photo(size), segmentation=crop_grid(), num_samples=16,
                                    masking="grey")
    return explanation, rows, columns


def test_the_explained_region_is_the_crop(case: tuple[layermask.Explanation, tuple[int, int], tuple[int, int]]) \
        -> None:
    explanation, (top, bottom), (left, right) = case
    heatmap = explanation.heatmap(size="original")
    assert heatmap.shape == explanation.original_size
    explained = ~np.isnan(heatmap)
    expected = np.zeros_like(explained)
    expected[top : bottom + 1, left : right + 1] = True
    np.testing.assert_array_equal(explained, expected)  # outside the crop: NaN, not zero


def test_a_known_segment_lands_on_the_right_pixels(case: tuple[layermask.Explanation, tuple[int, int],
                                                                  tuple[int, int]]) -> None:
    explanation, (top, _), (left, _) = case
    labels = explanation.segments_on("original")
    weights = explanation.explanations[explanation.labels[0]].weights
    heatmap = explanation.heatmap(size="original")
    np.testing.assert_array_equal(heatmap[labels >= 0], weights[labels[labels >= 0]].astype(np.float32))
    # Segment 0 is the crop's top-left 16×16 block: 16 resized pixels from the crop's corner, i.e.
    # 16·300/256 = 18.75 photo pixels, so it covers 18 or 19 rows and columns (within a pixel).
    rows, columns = np.nonzero(labels == 0)
    assert (rows.min(), columns.min()) == (top, left)
    assert rows.max() - top + 1 in (18, 19) and columns.max() - left + 1 in (18, 19)
    # The last segment ends at the crop's bottom-right corner.
    rows, columns = np.nonzero(labels == explanation.num_segments - 1)
    assert (rows.max(), columns.max()) == (np.nonzero(labels >= 0)[0].max(), np.nonzero(labels >= 0)[1].max())


@pytest.mark.parametrize("size", [(300, 451), (451, 300), (257, 1000), (180, 200), (224, 224)])
def test_the_mapping_inverts_the_preprocessing(size: tuple[int, int]) -> None:
    """Pushing the mapped label map through the real preprocessing gives the crop's segments back,
    up to a pixel at segment borders (nearest-neighbour rounding)."""
    preprocessing = Preprocessing()
    rows, columns = preprocessing.crop_indices(size)
    segments = crop_grid()
    on_photo = segments[np.maximum(rows, 0)][:, np.maximum(columns, 0)]
    on_photo[rows < 0] = -1
    on_photo[:, columns < 0] = -1
    back = preprocessing.crop_label_map(on_photo)
    assert (back >= 0).all()  # the crop never reaches outside the explained region
    wrong = back != segments
    near_a_border = np.zeros_like(wrong)
    for axis in (0, 1):
        for shift in (-1, 1):
            near_a_border |= np.roll(segments, shift, axis) != segments
    assert not (wrong & ~near_a_border).any()
    assert preprocessing.resized_size(size)[::-1] == Image.new("RGB", size[::-1]).resize(
        preprocessing.resized_size(size)[::-1]).size


def test_the_overlay_on_the_photo(case: tuple[layermask.Explanation, tuple[int, int], tuple[int, int]]) -> None:
    explanation, (top, bottom), (left, right) = case
    overlay = np.asarray(explanation.overlay(on="original"))
    assert overlay.shape == (*explanation.original_size, 3)
    outside = np.ones(overlay.shape[:2], dtype=bool)
    outside[top : bottom + 1, left : right + 1] = False
    grey = overlay[outside]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()  # greyed out, unpainted
    assert (grey >= 150).all()  # and light
    inside = overlay[top + 3 : bottom - 2, left + 3 : right - 2]
    assert not ((inside[..., 0] == inside[..., 1]) & (inside[..., 1] == inside[..., 2])).all()
    assert np.asarray(explanation.overlay()).shape == (224, 224, 3)  # the crop view is unchanged


def test_an_explanation_without_the_photo_offers_only_the_crop() -> None:
    explanation = layermask.explain(tiny_model(), photo((300, 451)), segmentation=crop_grid(), num_samples=8,
                                    masking="grey")
    explanation.original = None
    assert explanation.heatmap().shape == (224, 224)
    with pytest.raises(ValueError, match="original photo"):
        explanation.heatmap(size="original")
    with pytest.raises(ValueError, match="view must be"):
        explanation.overlay(on="photo")  # type: ignore[arg-type]
