"""Experiment 4: the broken masks, the generated discussion, and a quick run on EfficientNet-Lite0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import layermask
from layermask.evaluation import shape_leakage
from layermask.evaluation.common import EvaluationSettings, strategies
from layermask.evaluation.shape_leakage import CONDITIONS, condition_masks, leakage_sentence


def test_the_broken_mask_is_the_silhouette_rolled_by_half_the_image() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[0:2, 1:3] = True
    silhouette, broken, hidden = condition_masks(mask)
    assert np.array_equal(silhouette, mask)
    expected = np.zeros_like(mask)
    expected[3:5, 5:7] = True
    assert np.array_equal(broken, expected)
    assert np.array_equal(hidden, ~mask)
    assert silhouette.dtype == np.uint8


def _accuracy(broken: dict[str, float]) -> dict[str, dict[str, float]]:
    return {"silhouette": dict.fromkeys(strategies(), 0.9), "broken": broken, "hidden": dict.fromkeys(strategies(), 0)}


def test_the_sentence_names_the_strategies_that_read_the_shape() -> None:
    leaking = leakage_sentence(_accuracy({"layer": 0.05, "grey": 0.4, "black": 0.1, "blur": 0.3}))
    assert "grey, blur masking name the object from the outline alone" in leaking and "black," not in leaking
    assert "layer masking (5%)" in leaking
    calm = leakage_sentence(_accuracy({"layer": 0.2, "grey": 0.25, "black": 0.1, "blur": 0.2}))
    assert "No fill strategy exceeds layer masking (20%)" in calm


@pytest.mark.slow
def test_quick_shape_leakage_run_on_lite0(default_model: layermask.LoadedModel, tmp_path: Path) -> None:
    settings = EvaluationSettings.for_run(quick=True)
    started = time.perf_counter()
    section = shape_leakage.run(default_model, settings, tmp_path)
    print(f"quick shape-leakage run: {time.perf_counter() - started:.1f} s")
    summary = json.loads(json.dumps(section.summary))
    assert summary["composites"] == settings.composites
    assert 0.0 <= summary["broken_object_share"] <= 1.0
    assert set(summary["accuracy"]) == set(CONDITIONS)
    for by_strategy in summary["accuracy"].values():
        assert set(by_strategy) == set(strategies())
        for interval in by_strategy.values():
            assert 0.0 <= interval["low"] <= interval["mean"] <= interval["high"] <= 1.0
    # the kept composites are recognised from the object alone by layer masking, which sees nothing else
    assert summary["accuracy"]["silhouette"]["layer"]["mean"] >= 0.5
    assert section.figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["discussion"] in section.markdown
