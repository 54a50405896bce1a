"""`layermask demo` (what `make run` runs for now), end to end in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_demo_prints_all_strategies_and_writes_png(tmp_path: Path) -> None:
    output = tmp_path / "demo.png"
    result = subprocess.run([sys.executable, "-m", "layermask", "demo", "-o", str(output)],
                            capture_output=True, text=True, timeout=300, check=True)
    header, *rows = result.stdout.splitlines()[:6]
    for name in ("layer", "grey", "black", "blur"):
        assert name in header
    assert len(rows) == 5 and rows[0].startswith("1")
    assert "cat" in rows[0][:40]  # layer masking still sees the cat with half the photo hidden
    with Image.open(output) as image:
        assert image.width > 224 and image.height >= 224


def test_demo_unknown_model_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "layermask", "demo", "--model", "nope", "-o",
                             str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("layermask: error:") and "Traceback" not in result.stderr
