"""Server settings from file, environment and flags; generated stubs are current; the client CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from layermask_service.settings import Settings, load_settings
from tests.helpers.service import RunningServer

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_documented_ports() -> None:
    settings = load_settings(environ={})
    assert (settings.host, settings.port, settings.metrics_port) == ("localhost", 50051, 9464)
    assert settings.models == ("efficientnet_lite0",) and settings.max_message_bytes == 16 * 1024 * 1024


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('[server]\nport = 6000\nmax_queue = 2\nmodels = ["efficientnet_lite0"]\ngrace_seconds = 5\n')
    settings = load_settings(config, environ={"LAYERMASK_PORT": "7000", "LAYERMASK_MAX_CONCURRENT": "3"},
                             overrides={"port": 8000, "max_queue": None})
    assert settings.port == 8000 and settings.max_queue == 2 and settings.max_concurrent == 3
    assert settings.grace_seconds == 5.0


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nprot = 1\n", "unknown setting"),
    ("[server]\nport = 70000\n", "port must be a TCP port"),
    ("[server]\nmax_concurrent = 0\n", "max_concurrent must be positive"),
])
def test_bad_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_settings(config, environ={})


def test_generated_stubs_are_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0))
    yield running
    running.stop()


def test_client_cli_streams_progress_and_writes_png(server: RunningServer, tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()).save(photo)
    result = subprocess.run([sys.executable, "-m", "layermask_service", "client", "explain", str(photo),
                             "--target", server.target, "--samples", "24", "--segmentation", "grid:patch_size=32",
                             "-o", str(tmp_path / "out.png"), "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "24/24" in result.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    with Image.open(tmp_path / "out.png") as overlay:
        assert overlay.size == (451, 300)  # on the photo at its resolution (--crop: the 224² crop)
    assert '"numSamples": 24' in (tmp_path / "out.json").read_text()


def test_client_cli_reports_server_errors_in_one_line(server: RunningServer, tmp_path: Path) -> None:
    photo = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(photo)
    result = subprocess.run([sys.executable, "-m", "layermask_service", "client", "explain", str(photo),
                             "--target", server.target, "--samples", "1", "-o", str(tmp_path / "out.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    expected = "layermask: error: INVALID_ARGUMENT: num_samples: must be 0 (adaptive) or at least 2, got 1"
    assert result.stderr.strip() == expected
