"""`layermask torchserve` (the TorchServe container's command) and the probes' health check, for real."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from layermask_service.torchserve.process import free_port, parse_properties, scratch_directory
from layermask_service.torchserve.resources import CONFIG, METRICS, copy_resource, read_resource
from tests.helpers.service import RunningServer, wait_for
from tests.helpers.torchserve import MODEL


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layermask_service.healthcheck", *args], capture_output=True,
                          text=True, timeout=60)


def test_healthcheck_follows_the_grpc_health_service() -> None:
    server = RunningServer()
    try:
        assert healthcheck("--target", server.target).returncode == 0
    finally:
        server.stop()
    refused = healthcheck("--target", server.target, "--timeout", "1")
    assert refused.returncode == 1 and "unhealthy" in refused.stderr and "UNAVAILABLE" in refused.stderr


def test_standalone_torchserve_builds_the_archive_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    properties = parse_properties(read_resource(CONFIG))
    for key in ("inference_address", "management_address", "metrics_address"):
        properties[key] = f"http://127.0.0.1:{free_port()}"
    for key in ("grpc_inference_port", "grpc_management_port"):
        properties[key] = str(free_port())
    copy_resource(METRICS, tmp_path)  # config.properties names it relative to itself
    config = tmp_path / "config.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    store, workdir = tmp_path / "store", tmp_path / "work"
    command = [sys.executable, "-m", "layermask_service.cli", "torchserve", "--model-store", str(store),
               "--models", MODEL, "--config", str(config), "--public-host", "0.0.0.0", "--workdir", str(workdir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    ping = f"{properties['inference_address']}/ping"
    try:
        wait_for(lambda: process.poll() is not None or healthcheck("--torchserve-ping", ping).returncode == 0,
                 bound=300, what="TorchServe to report Healthy", interval=1.0)
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert (store / f"{MODEL}.mar").is_file()
        written = parse_properties((workdir / "config.properties").read_text())
        assert written["grpc_inference_address"] == "0.0.0.0"
        assert written["metrics_address"].startswith("http://0.0.0.0:")
        assert written["management_address"].startswith("http://127.0.0.1:")
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
        assert healthcheck("--torchserve-ping", ping, "--timeout", "1").returncode == 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@pytest.mark.parametrize("models", ["", " , "])
def test_standalone_torchserve_needs_a_model(models: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "layermask_service.cli", "torchserve", "--model-store",
                             str(tmp_path), "--models", models], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--models" in result.stderr


def test_a_deep_workdir_gets_a_short_scratch_directory_for_the_worker_sockets(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 20] * 5)
    deep.mkdir(parents=True)
    scratch = scratch_directory(deep)
    try:
        assert len(str(scratch / ".ts.sock.9000")) <= 107 and scratch.is_dir()
        assert scratch_directory(Path("/tmp")) == Path("/tmp/tmp")
    finally:
        if deep not in scratch.parents:
            shutil.rmtree(scratch)
