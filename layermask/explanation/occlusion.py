"""Occlusion: slide a hidden square over the crop and record how much the label's probability drops.

A ``window``×``window`` square moves by ``stride`` pixels over the model's input crop, in rows
and columns; the window positions along each side are ``0, stride, 2·stride, …`` while the window
fits, and when the last of them stops short of the edge one more is placed flush with it, so that
every pixel is covered. (``captum.attr.Occlusion`` places the same windows when ``size − window``
is a multiple of ``stride``, e.g. 224 with window 32 and stride 16; otherwise it has no
edge-aligned window and leaves the last pixels unexplained.) Each pixel's attribution is the mean,
over the windows covering it, of ``p(unmasked) − p(window hidden)``.

On the engine, step by step (each a function below):

1. :func:`window_starts` per side;
2. :func:`occlusion_cells`: the crop cut along every window edge into rectangular cells, numbered
   row by row: a segment label map on which every window is a union of cells;
3. :func:`window_rows`: row 0 keeps every cell (the unmasked image), then one keep-row per window
   hiding its cells, so any :data:`~layermask.explanation.scoring.Scorer` scores them;
4. :func:`fit_occlusion`: each cell's mean drop over the windows that hide it.

Because the attribution is constant on a cell, the result is an ordinary per-segment
:class:`~layermask.explanation.result.Explanation` whose segments are the cells
(``segmentation="occlusion"``, ``segmentation_params`` the window and stride): its heatmap is the
per-pixel attribution. Per label: ``intercept`` and ``local_prediction`` are ``p(unmasked)``, and
``score`` is 1.0, as nothing is fitted (the weights are the defined quantity itself).
``num_samples`` is the number of windows plus one; no sampling takes place and the sample count
and seed are unused.
"""

from __future__ import annotations

import numpy as np

from layermask.errors import InvalidOptionError
from layermask.explanation.engine import ExplanationPlan, LabelFit
from layermask.explanation.options import OcclusionWindow

__all__ = ["MAX_MATRIX_ENTRIES", "fit_occlusion", "occlusion_cells", "occlusion_rows", "window_rows",
           "window_starts"]

MAX_MATRIX_ENTRIES = 2**26
"""The most entries (windows × cells) of an occlusion keep-matrix: 64 MiB of ``uint8``. 224 pixels with
window 32 and stride 16 take 170 × 196; stride 2 would take over 10,000 × 12,000."""


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Window offsets along a side of ``size`` pixels: every ``stride`` while it fits, the last flush with the edge."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return np.asarray(starts, dtype=np.int64)


def _cuts(size: int, starts: np.ndarray, window: int) -> np.ndarray:
    return np.unique(np.concatenate([[0, size], starts, starts + window]))


def occlusion_cells(shape: tuple[int, int], settings: OcclusionWindow) -> np.ndarray:
    """The cell label map (H×W ``int64``): the crop cut along every window edge, cells numbered row by row."""
    axes = []
    for size in shape:
        cuts = _cuts(size, window_starts(size, settings.window, settings.stride), settings.window)
        axes.append(np.searchsorted(cuts, np.arange(size), side="right") - 1)
    rows, columns = axes
    width = int(columns.max()) + 1
    return rows[:, None] * width + columns[None, :]


def window_rows(shape: tuple[int, int], settings: OcclusionWindow) -> np.ndarray:
    """Keep-rows over :func:`occlusion_cells`: all ones, then one per window (row-major positions) hiding its cells."""
    hidden_axes = []
    for size in shape:
        starts = window_starts(size, settings.window, settings.stride)
        cuts = _cuts(size, starts, settings.window)
        cell_starts = cuts[:-1]
        hidden_axes.append((cell_starts[None, :] >= starts[:, None])
                           & (cell_starts[None, :] < starts[:, None] + settings.window))
    along_rows, along_columns = hidden_axes  # windows × cells, per side
    hidden = along_rows[:, None, :, None] & along_columns[None, :, None, :]
    hidden = hidden.reshape(along_rows.shape[0] * along_columns.shape[0], -1)
    rows = np.ones((len(hidden) + 1, hidden.shape[1]), dtype=np.uint8)
    rows[1:][hidden] = 0
    return rows


def occlusion_rows(shape: tuple[int, int], settings: OcclusionWindow) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1–3: the cell label map and the keep-rows, or ``InvalidOptionError`` if the matrix is too large."""
    windows = int(np.prod([len(window_starts(size, settings.window, settings.stride)) for size in shape]))
    cells = int(np.prod([len(_cuts(size, window_starts(size, settings.window, settings.stride), settings.window))
                         - 1 for size in shape]))
    if (windows + 1) * cells > MAX_MATRIX_ENTRIES:
        raise InvalidOptionError("occlusion.stride", f"{settings.stride} with window {settings.window} makes "
                                                     f"{windows} windows over {cells} cells, more than "
                                                     f"{MAX_MATRIX_ENTRIES} entries; use a larger stride")
    return occlusion_cells(shape, settings), window_rows(shape, settings)


def fit_occlusion(plan: ExplanationPlan, rows: np.ndarray, targets: np.ndarray) -> list[LabelFit]:
    """Step 4 for each label: each cell's mean drop ``p(row 0) − p(window)`` over the windows hiding it."""
    hidden = 1.0 - rows[1:].astype(np.float64)
    counts = hidden.sum(axis=0)
    fits: list[LabelFit] = []
    for column in range(targets.shape[1]):
        unmasked = float(targets[0, column])
        drops = unmasked - targets[1:, column]
        fits.append((hidden.T @ drops / counts, unmasked, 1.0, unmasked))
    return fits
