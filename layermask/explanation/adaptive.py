"""Adaptive sample counts (``num_samples="auto"``): score rows in batches until the weights settle.

The plan holds a pool of ``adaptive.max_samples`` rows sampled from the seeded generator as a
fixed run of that many samples would (LIME's and KernelSHAP's samplers draw row by row, so the
first ``n`` rows of the pool are the rows of a fixed run with ``num_samples=n``, and an adaptive run
that stops after ``n`` rows gives that run's result). Step by step (:func:`sample_adaptively`):

1. score the next ``adaptive.batch`` rows of the pool (KernelSHAP: rounded up to even, so an
   antithetic pair stays in one batch);
2. refit the first explained label on every row scored so far;
3. a *check* passes when its weights have a cosine similarity of at least ``adaptive.tolerance``
   with the previous batch's fit and the same ``adaptive.top_k`` largest weights (as a set);
4. stop, converged, after two consecutive passing checks; stop, not converged, when the pool is used up.

``progress(done, total)`` is called after each forward batch with ``total = adaptive.max_samples``;
a run that converges earlier simply makes no further call (``done`` stays below ``total``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from layermask.explanation.engine import ExplanationPlan, Fit, Progress, predict_perturbations
from layermask.explanation.scoring import Scorer

__all__ = ["cosine", "sample_adaptively", "settled", "top_set"]

CONSECUTIVE_CHECKS = 2


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 1.0 for two zero vectors, 0.0 when only one is zero."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return float(not a.any() and not b.any())
    return float(np.dot(a, b) / norms)


def top_set(weights: np.ndarray, k: int) -> frozenset[int]:
    """The ``k`` segments with the largest weights (all of them if there are fewer)."""
    return frozenset(int(s) for s in np.argsort(-weights, kind="stable")[:k])


def settled(current: np.ndarray, previous: np.ndarray, tolerance: float, top_k: int) -> bool:
    """Step 3: one check of the weights after a batch against those before it."""
    return cosine(current, previous) >= tolerance and top_set(current, top_k) == top_set(previous, top_k)


def sample_adaptively(plan: ExplanationPlan, scorer: Scorer, labels: Sequence[int], batch_size: int, fit: Fit,
                      step: int, progress: Progress | None = None) -> tuple[np.ndarray, bool]:
    """Steps 1–4 over ``plan.rows``: the targets of the rows used (a prefix of the pool) and whether it converged.

    ``step`` rows are scored per check, in forward batches of ``batch_size``; ``fit`` is the
    method's fit, applied to the first label only while checking.
    """
    settings = plan.options.adaptive
    pool = len(plan.rows)
    targets = np.empty((pool, len(labels)), dtype=np.float64)
    previous: np.ndarray | None = None
    passed = 0
    done = 0
    while done < pool:
        stop = min(pool, done + step)
        targets[done:stop] = predict_perturbations(scorer, plan, labels, batch_size, progress, start=done, stop=stop)
        done = stop
        weights = fit(plan, plan.rows[:done], targets[:done, :1])[0][0]
        if previous is not None:
            passed = passed + 1 if settled(weights, previous, settings.tolerance, settings.top_k) else 0
            if passed >= CONSECUTIVE_CHECKS:
                return targets[:done], True
        previous = weights
    return targets[:done], False
