"""The plot style every figure of the evidence report shares: one colour per strategy
(:data:`~layermask.evaluation.common.STRATEGY_COLOURS`), labelled axes, one legend, PNG at 150 dpi.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so a
report can be written on a machine without a display and from any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layermask.evaluation.common import STRATEGY_COLOURS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["bar_plot", "line_plot", "new_figure", "save_figure", "strategy_legend"]

_DPI = 150
_MARKERS = {"layer": "o", "grey": "s", "black": "^", "blur": "D"}


def new_figure(panels: int = 1, panel_size: tuple[float, float] = (4.6, 3.4)) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes side by side, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel_size[0] * panels, panel_size[1]), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def line_plot(axes: Axes, x: Sequence[float], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str,
              title: str = "", bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
              ylim: tuple[float, float] | None = None) -> None:
    """One line per strategy (``series[name]`` over ``x``), with an optional shaded (low, high) band each."""
    for name, values in series.items():
        colour = STRATEGY_COLOURS.get(name, "#888888")
        axes.plot(x, values, color=colour, marker=_MARKERS.get(name, "o"), markersize=4, linewidth=1.8, label=name)
        if bands is not None and name in bands:
            low, high = bands[name]
            axes.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
    _label(axes, xlabel, ylabel, title, ylim)


def bar_plot(axes: Axes, groups: Sequence[str], values: Mapping[str, Sequence[float]], *, ylabel: str,
             title: str = "", errors: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
             ylim: tuple[float, float] | None = None, xlabel: str = "") -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per strategy in it.

    ``errors[name]`` is (low, high) per group, drawn as an error bar from the bar's value.
    """
    import numpy as np

    names = list(values)
    width = 0.8 / max(len(names), 1)
    positions = np.arange(len(groups), dtype=float)
    for index, name in enumerate(names):
        heights = np.asarray(values[name], dtype=float)
        offsets = positions + (index - (len(names) - 1) / 2) * width
        error: Any = None
        if errors is not None and name in errors:
            low, high = (np.asarray(v, dtype=float) for v in errors[name])
            error = np.vstack([np.clip(heights - low, 0, None), np.clip(high - heights, 0, None)])
        axes.bar(offsets, heights, width * 0.95, color=STRATEGY_COLOURS.get(name, "#888888"), label=name,
                 yerr=error, capsize=2, error_kw={"linewidth": 0.8})
    axes.set_xticks(positions, list(groups))
    _label(axes, xlabel, ylabel, title, ylim)


def _label(axes: Axes, xlabel: str, ylabel: str, title: str, ylim: tuple[float, float] | None) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title, fontsize=10)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(True, alpha=0.3, linewidth=0.6)


def strategy_legend(figure: Figure, names: Sequence[str]) -> None:
    """One legend for the whole figure, strategies in the order given, above the panels (in two columns on a
    narrow figure, so that no entry is cut off)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=STRATEGY_COLOURS.get(n, "#888888"), marker=_MARKERS.get(n, "o"), linewidth=1.8,
                      label=f"{n} masking") for n in names]
    columns = len(names) if figure.get_figwidth() >= 1.8 * len(names) else 2
    figure.legend(handles=handles, loc="outside upper center", ncols=columns, frameon=False)


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI, format="png")
    return path
