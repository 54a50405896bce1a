"""What every experiment of the evidence report shares: its settings, its result section and the
strategies' colours.

A section's ``summary`` is plain JSON (dicts with string keys, lists, numbers, strings) and follows
key conventions that the quick run's test (``tests/evaluation/test_evaluate_quick.py``) checks
everywhere in it: a key ending in ``share``, ``rate``, ``accuracy``, ``jaccard`` or ``pointing``, or
starting with ``ablation_``, holds values in [0, 1]; one ending in ``kl`` or ``logit_change`` values
≥ 0; one ending in ``cosine`` values in [-1, 1]. The rule of a key covers everything nested under it
(lists, dicts keyed by strategy or segmentation). An interval is a dict with the keys ``mean``,
``low`` and ``high`` (low ≤ mean ≤ high). Each summary names every strategy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layermask.masking.names import MASKING_STRATEGIES

__all__ = ["STRATEGY_COLOURS", "EvaluationSettings", "Section", "patch_grid", "strategies"]

STRATEGY_COLOURS = {"layer": "#1b9e77", "grey": "#7570b3", "black": "#444444", "blur": "#d95f02"}
"""One colour per masking strategy, the same in every plot (colour-blind safe, Dark2)."""


def strategies() -> tuple[str, ...]:
    """The strategies every experiment reports, in the order of :data:`~layermask.MASKING_STRATEGIES`."""
    return tuple(MASKING_STRATEGIES)


def patch_grid(size: tuple[int, int], patch: int) -> np.ndarray:
    """The H×W map of ``patch``×``patch`` cells (labels 0…S-1, row-major) covering an image of ``size``.

    Sizes that are not a multiple of ``patch`` (260 for EfficientNet-Lite2) get narrower cells in
    the last row and column, so every pixel belongs to exactly one cell.
    """
    height, width = size
    columns = -(-width // patch)
    return (np.arange(height)[:, None] // patch) * columns + np.arange(width)[None, :] // patch


@dataclass(frozen=True)
class EvaluationSettings:
    """The sample counts of one run; the full run uses the counts the issue asks for, ``--quick`` small ones.

    Every random choice of an experiment derives from ``seed``.
    """

    quick: bool = False
    seed: int = 0
    # 1. and 2.: how many of the report's photos (layermask.evaluation.photos), all when None
    photos: int | None = None
    # 1. influence of hidden content
    influence_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    influence_masks: int = 8
    # 2. patch removal
    patch_size: int = 16
    removal_fractions: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
    removal_orders: int = 50
    # 3. LIME localisation (and 4. shape leakage, on the same composites)
    composites: int = 40
    lime_samples: int = 512
    keep_probability: float = 0.5
    top_segments: int = 20
    bootstrap_resamples: int = 2000
    batch_size: int = 32

    @classmethod
    def for_run(cls, quick: bool, seed: int = 0) -> EvaluationSettings:
        if not quick:
            return cls(seed=seed)
        return cls(quick=True, seed=seed, photos=2, influence_fractions=(0.5,), influence_masks=2,
                   removal_fractions=(0.0, 0.3, 0.6, 0.9), removal_orders=2, composites=2, lime_samples=32,
                   top_segments=5, bootstrap_resamples=200)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self, *parts: str) -> str:
        """A short hash of these settings and ``parts`` (e.g. the model name), naming cached results."""
        text = json.dumps([self.to_dict(), *parts], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Section:
    """One experiment's part of the report.

    ``markdown`` is the section body (tables and prose, figures linked by file name relative to the
    report); ``figures`` the PNG files it wrote; ``summary`` its headline numbers, for the JSON
    written next to the report and for the checks of the quick run.
    """

    title: str
    markdown: str
    figures: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
