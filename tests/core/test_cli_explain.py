"""`layermask explain` end to end on a real photo, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layermask", "explain", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def coffee_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "coffee.jpg"
    Image.fromarray(data.coffee()).save(path)
    return path


def test_explains_a_real_photo(coffee_jpeg: Path, tmp_path: Path) -> None:
    result = run_cli(str(coffee_jpeg), "--samples", "48", "--segmentation", "slic:n_segments=40",
                     "-o", str(tmp_path / "out.png"), "--json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    assert "espresso" in result.stdout.splitlines()[1]  # first of the top predictions
    assert "segment" in result.stdout
    assert "48/48" in result.stderr  # the progress bar reached the end
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (600, 400)  # the photo at its resolution, by default
    explanation = json.loads((tmp_path / "out.json").read_text())
    assert explanation["num_samples"] == 48 and explanation["explanations"][0]["label"] == 967
    assert explanation["original_size"] == [400, 600]
    assert explanation["segmentation_params"]["n_segments"] == 40


def test_client_label_map(coffee_jpeg: Path, tmp_path: Path) -> None:
    labels = np.repeat(np.arange(4), 56)[None, :].repeat(224, axis=0)
    np.save(tmp_path / "labels.npy", labels)
    result = run_cli(str(coffee_jpeg), "--samples", "16", "--segments-file", str(tmp_path / "labels.npy"),
                     "--label", "967", "--no-progress", "--crop", "-o", str(tmp_path / "out.png"))
    assert result.returncode == 0, result.stderr
    assert "label 967 (espresso)" in result.stdout and result.stderr == ""
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (224, 224)  # --crop: the model's input crop


def test_kernel_shap_with_adaptive_samples(coffee_jpeg: Path, tmp_path: Path) -> None:
    result = run_cli(str(coffee_jpeg), "--method", "kernel_shap", "--samples", "auto", "--max-samples", "128",
                     "--tolerance", "0.9", "--segmentation", "grid:patch_size=56", "-o", str(tmp_path / "out.png"),
                     "--json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    explanation = json.loads((tmp_path / "out.json").read_text())
    assert explanation["method"] == "kernel_shap" and explanation["num_segments"] == 16
    assert explanation["num_samples"] <= 128 and explanation["converged"] in (True, False)
    converged = ", converged" if explanation["converged"] else ", not converged"
    assert f"kernel_shap: {explanation['num_samples']} samples{converged}, 16 segments" in result.stdout
    assert result.stderr.endswith("\n") and f"{explanation['num_samples']}/128" in result.stderr
    weights = explanation["explanations"][0]
    assert sum(weights["weights"]) == pytest.approx(weights["local_prediction"] - weights["intercept"], abs=1e-9)


def test_occlusion_window(coffee_jpeg: Path, tmp_path: Path) -> None:
    result = run_cli(str(coffee_jpeg), "--method", "occlusion", "--window", "112", "--stride", "56",
                     "--no-progress", "-o", str(tmp_path / "out.png"), "--json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    explanation = json.loads((tmp_path / "out.json").read_text())
    assert explanation["method"] == "occlusion" and explanation["segmentation"] == "occlusion"
    assert explanation["num_samples"] == 3 * 3 + 1 and explanation["num_segments"] == 4 * 4
    assert explanation["segmentation_params"] == {"window": 112, "stride": 56}
    assert "occlusion: 10 samples, 16 segments" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}"], "image file not found"),
    (["{corrupt}"], "not a PNG, JPEG or WebP image"),
    (["{photo}", "--samples", "1"], "num_samples: must be an integer of at least 2 or 'auto'"),
    (["{photo}", "--max-segments", "1"], "max_segments: must be an integer of at least 2"),
    (["{photo}", "--segmentation", "slic:n_segments=many"], "slic parameter n_segments must be int"),
    (["{photo}", "--segmentation", "blobs"], "unknown segmentation 'blobs'"),
    (["{photo}", "--masking", "pink"], "invalid choice: 'pink'"),
    (["{photo}", "--model", "resnet50"], "needs a local weights file"),
    (["{photo}", "--label", "5000"], "labels: [5000] out of range"),
    (["{photo}", "--samples", "many"], "num_samples: must be an integer of at least 2 or 'auto', got 'many'"),
    (["{photo}", "--method", "occlusion", "--samples", "auto"], "num_samples: 'auto' works for lime and kernel_shap"),
    (["{photo}", "--method", "shapley"], "invalid choice: 'shapley'"),
    (["{photo}", "--tolerance", "1.5"], "adaptive.tolerance: must be in (0, 1]"),
    (["{photo}", "--max-samples", "10"], "adaptive.max_samples: must be at least adaptive.batch (64)"),
    (["{photo}", "--method", "occlusion", "--window", "300"], "occlusion.window: must be at most"),
    (["{photo}", "--stride", "0"], "occlusion.stride: must be a positive integer"),
])
def test_errors_are_one_line_without_traceback(coffee_jpeg: Path, tmp_path: Path, args: list[str],
                                               message: str) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really")
    paths = {"missing": str(tmp_path / "missing.png"), "corrupt": str(corrupt), "photo": str(coffee_jpeg)}
    result = run_cli(*[a.format(**paths) for a in args], "-o", str(tmp_path / "out.png"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
