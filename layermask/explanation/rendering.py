"""Drawing a heatmap over an image, for explanation PNGs."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage.segmentation import find_boundaries

__all__ = ["diverging_colours", "heatmap_scale", "render_overlay"]

# A blue-white-red diverging ramp: negative weights blue, positive red.
_NEGATIVE = np.array([33, 102, 172], dtype=np.float32)
_NEUTRAL = np.array([247, 247, 247], dtype=np.float32)
_POSITIVE = np.array([178, 24, 43], dtype=np.float32)
# Pixels outside the explained crop: the photo in light grey, no heatmap colour.
_UNEXPLAINED_GREY = 215.0
_UNEXPLAINED_KEEP = 0.3


def heatmap_scale(values: np.ndarray) -> float:
    """The largest magnitude of ``values`` (NaN ignored), or 1 where there is none."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def diverging_colours(values: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Map values to RGB (float32 0–255), symmetric around 0 and scaled by ``scale`` (by default
    the largest magnitude); NaN maps to the neutral colour."""
    scale = scale or heatmap_scale(values)
    t = np.clip(np.nan_to_num(values / scale), -1.0, 1.0)[..., None]
    towards = np.where(t >= 0, _POSITIVE, _NEGATIVE)
    return _NEUTRAL + np.abs(t) * (towards - _NEUTRAL)


def _lines(mask: np.ndarray, width: int) -> np.ndarray:
    return binary_dilation(mask, iterations=(width - 1) // 2) if width > 2 else mask


def render_overlay(image: np.ndarray, heatmap: np.ndarray, segments: np.ndarray, outlined: list[int],
                   alpha: float = 0.55, scale: float | None = None, line_width: int = 1) -> Image.Image:
    """``image`` blended with the coloured ``heatmap``, thin segment boundaries, and the
    ``outlined`` segments drawn with a thick yellow line.

    Pixels where ``heatmap`` is NaN (segment -1: outside the explained crop) are not explained:
    they show the photo greyed out (light grey, no heatmap colour, no lines). ``scale`` is the weight that
    gets the full colour (by default the largest magnitude); ``line_width`` scales the lines, for
    images larger than the crop.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pixels = image.astype(np.float32)
    blended = (1.0 - alpha) * pixels + alpha * diverging_colours(heatmap, scale)
    unexplained = np.isnan(heatmap)
    if unexplained.any():
        grey = pixels[unexplained].mean(axis=-1, keepdims=True)
        blended[unexplained] = _UNEXPLAINED_KEEP * grey + (1.0 - _UNEXPLAINED_KEEP) * _UNEXPLAINED_GREY
    blended[_lines(find_boundaries(segments, mode="inner"), line_width) & ~unexplained] = (60, 60, 60)
    if outlined:
        chosen = np.isin(segments, outlined)
        blended[_lines(find_boundaries(chosen, mode="thick"), 2 * line_width) & ~unexplained] = (255, 215, 0)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
