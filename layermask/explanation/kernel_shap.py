"""KernelSHAP over segments: Shapley values of the segments by weighted linear regression.

A coalition is a keep-row ``z`` (1 = the segment is visible, the rest hidden by the masking
strategy) and ``f(z)`` the label's probability under it. The Shapley values ``φ`` are the
solution of the weighted least-squares problem

    minimise Σ_z k(z) (f(z) − f(0) − z·φ)²   subject to   Σ φ = f(1) − f(0)   (efficiency)

with the Shapley kernel ``k``, over every coalition except the empty and the full one, whose
values are the constraints (Lundberg & Lee, NeurIPS 2017). Step by step (each a function below):

1. :func:`shapley_kernel`: ``k(s) = (M − 1) / (C(M, s) · s · (M − s))`` for a coalition of
   ``s`` of ``M`` segments;
2. :func:`plan_coalitions`: row 0 keeps every segment, row 1 none; then, when ``2^M`` fits in
   the sample budget, every other coalition once (:func:`enumerate_coalitions`, weighted by the
   kernel: the result is exact), else :func:`sample_coalitions`: antithetic pairs, a coalition
   whose size is drawn from the kernel's size distribution ``p(s) ∝ (M − 1) / (s (M − s))`` and
   then its complement; sampled rows weigh the same, the sampling itself following the kernel;
3. the rows are scored like any others (:func:`~layermask.explanation.engine.predict_perturbations`);
4. :func:`fit_shapley`: the constrained regression, solved by eliminating the last segment's value
   (``φ_M = Δ − Σ_{j<M} φ_j``), so that for every label the values sum exactly to
   ``f(all visible) − f(all hidden)``.

The result per label: ``weights`` the Shapley values, ``intercept`` ``f(all hidden)``,
``local_prediction`` ``f(all visible)``, ``score`` the weighted R² of ``f(0) + z·φ`` on the rows
that are neither empty nor full.
"""

from __future__ import annotations

import math

import numpy as np

from layermask.explanation.engine import ExplanationPlan, LabelFit

__all__ = ["enumerate_coalitions", "fit_kernel_shap", "fit_shapley", "paired_batch", "plan_coalitions",
           "sample_coalitions", "shapley_kernel"]


def shapley_kernel(num_segments: int, sizes: np.ndarray) -> np.ndarray:
    """The Shapley kernel weight of a coalition of each size in ``sizes`` (infinite for 0 and ``num_segments``)."""
    m = num_segments
    sizes = np.asarray(sizes, dtype=np.int64)
    weights = np.full(sizes.shape, np.inf)
    inside = (sizes > 0) & (sizes < m)
    s = sizes[inside]
    weights[inside] = (m - 1) / (np.array([math.comb(m, int(k)) for k in s], dtype=np.float64) * s * (m - s))
    return weights


def enumerate_coalitions(num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``2^M`` coalitions (full first, empty second) and their kernel weights (0 for those two)."""
    m = num_segments
    codes = np.arange(2**m, dtype=np.int64)
    codes = np.concatenate([[2**m - 1, 0], codes[1:-1]])
    rows = ((codes[:, None] >> np.arange(m)) & 1).astype(np.uint8)
    weights = shapley_kernel(m, rows.sum(axis=1))
    weights[:2] = 0.0
    return rows, weights


def sample_coalitions(num_samples: int, num_segments: int, seed: int) -> np.ndarray:
    """``num_samples`` keep-rows: the full and the empty coalition, then antithetic pairs ``z, 1 − z``.

    Each pair draws ``M + 1`` uniforms in order: the first picks the size by inverse CDF of the
    kernel's size distribution, the others rank the segments (the ``size`` lowest are kept). The
    first ``n`` rows are therefore the same whatever ``num_samples`` is; an odd count ends with a
    coalition whose complement is cut off.
    """
    m = num_segments
    rows = np.empty((num_samples, m), dtype=np.uint8)
    rows[0], rows[1 : min(2, num_samples)] = 1, 0
    pairs = (num_samples - 1) // 2
    if pairs == 0 or m < 2:
        rows[2:] = np.arange(num_samples - 2)[:, None] % 2 == 0  # m = 1: only full and empty exist
        return rows
    sizes = np.arange(1, m)
    probability = (m - 1) / (sizes * (m - sizes))
    cdf = np.cumsum(probability / probability.sum())
    uniforms = np.random.default_rng(seed).random((pairs, m + 1))
    size = np.minimum(np.searchsorted(cdf, uniforms[:, 0], side="right"), m - 2) + 1
    ranks = uniforms[:, 1:].argsort(axis=1, kind="stable").argsort(axis=1, kind="stable")
    chosen = (ranks < size[:, None]).astype(np.uint8)
    paired = np.stack([chosen, 1 - chosen], axis=1).reshape(2 * pairs, m)
    rows[2:] = paired[: num_samples - 2]
    return rows


def plan_coalitions(num_segments: int, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of a run with at most ``budget`` rows: exact enumeration (with kernel weights) when
    ``2^M ≤ budget``, else ``budget`` sampled rows (weights ``None``: all equal)."""
    if num_segments < 63 and 2**num_segments <= budget:
        return enumerate_coalitions(num_segments)
    return sample_coalitions(budget, num_segments, seed), None


def paired_batch(batch: int) -> int:
    """An adaptive batch rounded up to even, so that a pair is never split between batches (row 0 and
    1 are the full and empty coalitions, then pairs start at even rows)."""
    return batch + batch % 2


def fit_shapley(rows: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> LabelFit:
    """The constrained weighted least-squares fit of one label's ``targets`` (one per row).

    ``rows`` must contain the full and the empty coalition; they give ``f(1)`` and ``f(0)``; the
    other rows are regressed with ``weights`` (all 1 if ``None``). Returns ``(φ, f(0), weighted R², f(1))``.
    """
    full, empty = rows.all(axis=1), ~rows.any(axis=1)
    if not full.any() or not empty.any():
        raise ValueError("KernelSHAP needs the all-visible and the all-hidden row among its rows")
    f_full, f_empty = float(targets[np.argmax(full)]), float(targets[np.argmax(empty)])
    delta = f_full - f_empty
    inside = ~(full | empty)
    z = rows[inside].astype(np.float64)
    y = targets[inside].astype(np.float64)
    w = np.ones(len(z)) if weights is None else np.asarray(weights, dtype=np.float64)[inside]
    m = rows.shape[1]
    if m == 1 or len(z) == 0:
        return np.full(m, delta / m), f_empty, 1.0, f_full
    root = np.sqrt(w)
    design = (z[:, :-1] - z[:, -1:]) * root[:, None]
    response = (y - f_empty - z[:, -1] * delta) * root
    head = np.linalg.lstsq(design, response, rcond=None)[0]
    phi = np.append(head, delta - head.sum())
    residual = y - f_empty - z @ phi
    mean = np.average(y, weights=w)
    total = float(np.sum(w * (y - mean) ** 2))
    unexplained = float(np.sum(w * residual**2))
    score = 1.0 - unexplained / total if total > 0 else float(unexplained == 0.0)
    return phi, f_empty, score, f_full


def fit_kernel_shap(plan: ExplanationPlan, rows: np.ndarray, targets: np.ndarray) -> list[LabelFit]:
    """Step 4 for each label (column of ``targets``), with the plan's kernel weights where it enumerated."""
    weights = None if plan.row_weights is None else plan.row_weights[: len(rows)]
    return [fit_shapley(rows, targets[:, column], weights) for column in range(targets.shape[1])]
