"""How an Explanation shows itself: a short repr, PNG bytes for notebooks, and several side by side."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

import layermask
from tests.helpers.tiny_model import tiny_model


@pytest.fixture(scope="module")
def explanations() -> list[layermask.Explanation]:
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    return [layermask.explain(tiny_model(), photo, masking=masking, segmentation="grid", num_samples=24, seed=0)
            for masking in ("layer", "grey", "blur")]


def test_repr_is_short_and_says_what_was_explained(explanations: list[layermask.Explanation]) -> None:
    text = repr(explanations[0])
    label = explanations[0].explanations[explanations[0].labels[0]]
    for part in ("'tiny'", "layer masking", "24 samples", f"label {label.label} ('{label.name}')",
                 f"R² {label.score:.3f}", "top segments"):
        assert part in text
    assert len(text) < 300 and "\n" not in text


def test_repr_png_is_the_overlay_on_the_photo(explanations: list[layermask.Explanation]) -> None:
    data = explanations[0]._repr_png_()
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (320, 240) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), np.asarray(explanations[0].overlay(on="original")))


def test_plot_shares_one_colour_scale(explanations: list[layermask.Explanation]) -> None:
    figure = layermask.plot(explanations)
    panels, colour_bar = figure.axes[:3], figure.axes[3:]
    assert len(figure.axes) == len(explanations) + 1 and len(colour_bar) == 1
    largest = max(float(np.abs(e.explanations[e.labels[0]].weights).max()) for e in explanations)
    for axis, explanation in zip(panels, explanations):
        heatmap = axis.images[-1]
        assert (heatmap.norm.vmin, heatmap.norm.vmax) == pytest.approx((-largest, largest))
        assert explanation.masking in axis.get_title()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=40)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.width > image.height


def test_plot_on_the_photo_leaves_the_outside_unpainted(explanations: list[layermask.Explanation]) -> None:
    figure = layermask.plot(explanations[:2], on="original", titles=["a", "b"])
    assert len(figure.axes) == 3 and figure.axes[0].get_title() == "a"
    heatmap = figure.axes[0].images[-1].get_array()
    assert heatmap.shape == (240, 320) and np.ma.getmaskarray(heatmap)[:, 0].all()  # NaN: not drawn
    assert len(figure.axes[0].patches) == 1  # the crop's outline


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                        explanations: list[layermask.Explanation]) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'layermask\[plot\]'"):
        layermask.plot(explanations)
