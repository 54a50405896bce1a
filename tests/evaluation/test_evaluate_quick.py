"""``layermask evaluate --quick`` end to end on the real EfficientNet-Lite0, from the installed command: the
report, its plots, the invariance assertion, the ranges of every number, and resuming from the cache."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from layermask.evaluation.common import strategies
from layermask.evaluation.report import SECTIONS

LAYERMASK = Path(sys.executable).with_name("layermask")

# The key conventions of layermask.evaluation.common: (pattern, lowest, highest).
RANGES = [
    (re.compile(r"(share|rate|accuracy|jaccard|pointing)$|^ablation_"), 0.0, 1.0),
    (re.compile(r"cosine$"), -1.0, 1.0),
    (re.compile(r"(kl|logit_change)$"), 0.0, math.inf),
]


def _evaluate(output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LAYERMASK), "evaluate", "--quick", "-o", str(output), *extra],
                          capture_output=True, text=True, timeout=600)


def _check_numbers(value: Any, where: str, bounds: tuple[float, float] | None = None) -> int:
    """Check every number under ``value`` against the range its nearest named key implies; count them."""
    if isinstance(value, dict):
        if "mean" in value and {"low", "high"} <= value.keys():
            assert value["low"] - 1e-12 <= value["mean"] <= value["high"] + 1e-12, f"{where}: interval out of order"
        checked = 0
        for key, item in value.items():
            own = next(((low, high) for pattern, low, high in RANGES if pattern.search(key)), None)
            checked += _check_numbers(item, f"{where}.{key}", own or bounds)
        return checked
    if isinstance(value, list):
        return sum(_check_numbers(item, f"{where}[{i}]", bounds) for i, item in enumerate(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert math.isfinite(value), f"{where} = {value}"
        if bounds is not None:
            assert bounds[0] - 1e-9 <= value <= bounds[1] + 1e-9, f"{where} = {value} outside {bounds}"
            return 1
    return 0


def _names(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {n for item in value.values() for n in _names(item)}
    if isinstance(value, list):
        return {n for item in value for n in _names(item)}
    return {value} if isinstance(value, str) else set()


def test_evaluate_help_from_the_installed_command() -> None:
    result = subprocess.run([str(LAYERMASK), "evaluate", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--model", "--seed", "--fresh", "--output"):
        assert option in result.stdout


def test_evaluate_unknown_model_is_a_one_line_error(tmp_path: Path) -> None:
    result = _evaluate(tmp_path / "report", "--model", "nope")
    assert result.returncode == 2
    assert result.stderr.startswith("layermask: error: unknown model 'nope'") and result.stderr.count("\n") == 1
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_quick_evaluation_writes_a_valid_report_and_resumes(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = _evaluate(tmp_path)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert seconds < 600, f"the quick run took {seconds:.0f} s"

    readme = (tmp_path / "README.md").read_text()
    headings = ("Influence of hidden content", "Missingness bias", "Localisation", "Mask-shape leakage", "Discussion")
    for heading in (*headings, "Run time"):
        assert heading.lower() in readme.lower(), heading
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert len(figures) >= len(SECTIONS)
    for name in figures:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 250, name
            image.verify()

    report = json.loads((tmp_path / "summary.json").read_text())
    assert list(report["sections"]) == list(SECTIONS)
    influence = report["sections"]["influence"]
    layer = [r for r in influence["results"] if r["strategy"] == "layer"]
    assert len(layer) == len(influence["fractions"]) * len(influence["replacements"]) > 0
    assert all(r["max_abs_logit_change"] == 0.0 for r in layer) and influence["layer_invariance_held"] is True
    assert any(r["max_abs_logit_change"] > 0 for r in influence["results"] if r["strategy"] == "blur")
    for key, summary in report["sections"].items():
        assert _check_numbers(summary, key) > 0, f"{key}: no checkable numbers"
        assert set(strategies()) <= _names(summary), f"{key} misses a strategy"
    curves = report["sections"]["patch_removal"]["curves"]
    for strategy in strategies():  # nothing hidden: the unmasked prediction, whatever the strategy
        assert curves[strategy]["unchanged_top1_share"][0] == 1.0 and curves[strategy]["artifact_rate"][0] == 0.0

    again = _evaluate(tmp_path)  # every section comes from the cache
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("taken from") == len(SECTIONS), again.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["sections"] == report["sections"]
