"""Drawing a heatmap over an image, for explanation PNGs."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

__all__ = ["diverging_colours", "render_overlay"]

# A blue-white-red diverging ramp: negative weights blue, positive red.
_NEGATIVE = np.array([33, 102, 172], dtype=np.float32)
_NEUTRAL = np.array([247, 247, 247], dtype=np.float32)
_POSITIVE = np.array([178, 24, 43], dtype=np.float32)


def diverging_colours(values: np.ndarray) -> np.ndarray:
    """Map values to RGB (float32 0–255), symmetric around 0 and scaled by the largest magnitude."""
    scale = float(np.abs(values).max()) or 1.0
    t = np.clip(values / scale, -1.0, 1.0)[..., None]
    towards = np.where(t >= 0, _POSITIVE, _NEGATIVE)
    return _NEUTRAL + np.abs(t) * (towards - _NEUTRAL)


def render_overlay(image: np.ndarray, heatmap: np.ndarray, segments: np.ndarray, outlined: list[int],
                   alpha: float = 0.55) -> Image.Image:
    """``image`` blended with the coloured ``heatmap``, thin segment boundaries, and the
    ``outlined`` segments drawn with a thick yellow line."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * diverging_colours(heatmap)
    blended[find_boundaries(segments, mode="inner")] = (60, 60, 60)
    if outlined:
        chosen = np.isin(segments, outlined)
        blended[find_boundaries(chosen, mode="thick")] = (255, 215, 0)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
