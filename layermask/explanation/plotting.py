"""Several explanations side by side, on one colour scale (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from layermask.explanation.rendering import heatmap_scale
from layermask.explanation.result import Explanation, View

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot"]

_INSTALL_HINT = "layermask.plot needs matplotlib; install it with: pip install 'layermask[plot]'"


def _matplotlib() -> Any:
    try:
        import matplotlib.figure
        import matplotlib.patches
    except ImportError as error:
        raise ImportError(_INSTALL_HINT, name=error.name) from error
    return matplotlib


def _crop_outline(explanation: Explanation) -> tuple[tuple[float, float], float, float]:
    """The crop's rectangle on the original photo: ((x, y), width, height) in pixel edges."""
    assert explanation.preprocessing is not None and explanation.original_size is not None
    rows, columns = explanation.preprocessing.crop_indices(explanation.original_size)
    inside_rows, inside_columns = np.flatnonzero(rows >= 0), np.flatnonzero(columns >= 0)
    top, left = inside_rows[0] - 0.5, inside_columns[0] - 0.5
    return (left, top), inside_columns[-1] + 0.5 - left, inside_rows[-1] + 0.5 - top


def plot(explanations: Sequence[Explanation] | Explanation, label: int | None = None, on: View = "crop",
         titles: Sequence[str] | None = None, alpha: float = 0.6, cmap: str = "RdBu_r",
         panel_size: float = 3.2) -> Figure:
    """Draw ``explanations`` side by side, their heatmaps on one colour scale, with a colour bar.

    Each panel shows the image with the heatmap of ``label`` (by default each explanation's first
    label) over it, coloured by ``cmap`` from ``-m`` to ``+m`` where ``m`` is the largest weight
    magnitude over all panels, so colours compare across panels (e.g. the same image under each
    masking strategy). ``on="original"`` draws on the photos as given: the region outside the
    crop is left unpainted (the photo without colour) and the crop is outlined with a dashed line.
    Titles default to the masking strategy, the label's name and R².

    Returns a ``matplotlib.figure.Figure`` (not attached to pyplot; notebooks display it, and
    ``figure.savefig(path)`` writes it) with one axis per explanation and one for the colour bar.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'layermask[plot]'``).
    """
    matplotlib = _matplotlib()
    panels = [explanations] if isinstance(explanations, Explanation) else list(explanations)
    if not panels:
        raise ValueError("plot needs at least one explanation")
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"{len(titles)} titles for {len(panels)} explanations")
    heatmaps = [e.heatmap(label, on) for e in panels]
    scale = max(heatmap_scale(h) for h in heatmaps)
    norm = matplotlib.colors.Normalize(vmin=-scale, vmax=scale)
    figure = matplotlib.figure.Figure(figsize=(panel_size * len(panels) + 1.2, panel_size + 0.6),
                                      layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for index, (explanation, heatmap, axis) in enumerate(zip(panels, heatmaps, axes)):
        axis.imshow(explanation.image if on == "crop" else explanation.original)
        axis.imshow(heatmap, cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
        if on == "original":
            corner, width, height = _crop_outline(explanation)
            axis.add_patch(matplotlib.patches.Rectangle(corner, width, height, fill=False, linestyle="--",
                                                        linewidth=1.0, edgecolor="0.2"))
        result = explanation._label(label)
        axis.set_title(titles[index] if titles is not None else
                       f"{explanation.masking}: {result.name}\nR² {result.score:.2f}", fontsize=9)
        axis.set_axis_off()
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    figure.colorbar(mappable, ax=list(axes), shrink=0.8, label="segment weight")
    return figure
