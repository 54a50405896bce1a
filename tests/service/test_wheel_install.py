"""The built wheel, installed (not editable) into a fresh venv, works away from the checkout.

The source tree is copied into ``tmp_path`` and built there without network; the wheel is
installed with ``--no-deps`` into a venv of its own, which sees the heavy dependencies (torch, grpc,
TorchServe, …) of the venv running the tests through a ``.pth`` line naming that venv's
site-packages. Such a line only appends the directory to ``sys.path``: the ``.pth`` files inside it
(the editable install of the checkout) are not processed, so ``layermask`` can only come from the
wheel. The fresh venv's bin holds only ``layermask``: TorchServe's scripts are not next to its
``python`` nor on PATH. Every command runs from ``tmp_path`` with that venv's ``layermask`` script,
with nothing in its environment pointing at the checkout.

(Over 300 lines: one build-and-install fixture chain shared by every step; split, each module would
build and install the wheel again.)

(Over 300 lines: every test shares one fresh venv, built once from the wheel.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from skimage import data

from layermask_service.client import ExplainClient, explain_request
from layermask_service.torchserve.process import PORT_KEYS, console_script, free_port
from layermask_service.translate import segments_from
from tests.helpers.service import png_bytes

ROOT = Path(__file__).resolve().parents[2]
MODEL = "efficientnet_lite0"
PACKAGE_DATA = ("layermask_service/torchserve/handler.py", "layermask_service/torchserve/config.properties",
                "layermask_service/torchserve/metrics.yaml")
STUBS = tuple(f"layermask_service/proto/{path.name}"
              for path in sorted((ROOT / "service" / "layermask_service" / "proto").glob("*_pb2*.py*")))
COMMAND_BOUND_S = 300.0
SERVE_BOUND_S = 120.0  # until SERVING: loading the model on a loaded 2-core machine
TORCHSERVE_BOUND_S = 240.0  # until SERVING with TorchServe: the Java frontend, then a worker loading the model
STOP_BOUND_S = 60.0


@dataclass(frozen=True)
class Installed:
    """A fresh venv with the wheel installed, and where to run its commands."""

    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path  # outside the checkout
    environment: Mapping[str, str]
    dependencies: tuple[str, ...]  # the test venv's site-packages, appended to the fresh venv's sys.path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def layermask(self) -> Path:
        return self.venv / "bin" / "layermask"


def run(command: list[str | Path], *, cwd: Path, env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_BOUND_S) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to completion; fail the test with its output unless it exits 0."""
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{command[0]} … exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def inside_checkout(path: str) -> bool:
    return Path(path).resolve().is_relative_to(ROOT)


def isolated_environment(venv: Path) -> dict[str, str]:
    """This process's environment without anything that points at the checkout, chooses another Python or
    configures layermask or pip, and with ``venv``'s bin first on PATH."""
    kept = {key: value for key, value in os.environ.items()
            if not key.startswith(("PYTHON", "VIRTUAL_ENV", "LAYERMASK_", "PIP_")) and str(ROOT) not in value}
    path = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry and not inside_checkout(entry)]
    return {**kept, "PATH": os.pathsep.join([str(venv / "bin"), *path]), "VIRTUAL_ENV": str(venv),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def copy_sources(target: Path) -> None:
    """Copy what a commit of the working tree would hold (tracked and untracked, not ignored files) to ``target``."""
    listing = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    for name in listing.stdout.split("\0"):
        source = ROOT / name
        if name and source.is_file():  # a tracked file deleted in the working tree is still listed
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def test_a_missing_console_script_is_one_line_naming_the_extra() -> None:
    with pytest.raises(FileNotFoundError, match=r"^no-such-tool not found; .*'layermask\[torchserve\]'$"):
        console_script("no-such-tool")


def test_console_script_runs_the_entry_point_on_this_interpreter(tmp_path: Path) -> None:
    """The command does not depend on the script lying next to ``sys.executable`` or on PATH."""
    command = console_script("torch-model-archiver")
    assert command[0] == sys.executable
    result = subprocess.run([*command, "--help"], cwd=tmp_path, env={"PATH": ""}, capture_output=True, text=True,
                            timeout=COMMAND_BOUND_S, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: torch-model-archiver")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not inside_checkout(str(base)), "the wheel must be built and installed outside the checkout"
    source, dist, venv, workdir = base / "src", base / "dist", base / "venv", base / "work"
    workdir.mkdir()
    environment = isolated_environment(venv)
    copy_sources(source)
    # In-tree build (build/, *.egg-info) in the copy, with this venv's setuptools: no network.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
         "-q", "-w", dist, source], cwd=base, env=environment)
    wheels = list(dist.glob("layermask-*.whl"))
    assert len(wheels) == 1, wheels
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base, env=environment)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir", "-q",
         wheels[0]], cwd=base, env=environment)
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=workdir, env=environment).stdout.strip())
    dependencies = tuple(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    (site_packages / "test_venv_dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    return Installed(wheels[0], venv, site_packages, workdir, environment, dependencies)


@pytest.fixture(scope="module")
def model_store(installed: Installed) -> Path:
    """The directory ``layermask archive`` of the fresh venv wrote its archive to."""
    store = installed.workdir / "store"
    run([installed.layermask, "archive", "--model", MODEL, "-o", store], cwd=installed.workdir,
        env=installed.environment)
    return store


@pytest.mark.slow
def test_wheel_holds_package_data_and_stubs_but_no_tests(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert STUBS and set(STUBS) <= names
    assert set(PACKAGE_DATA) <= names
    assert "layermask/__init__.py" in names and "layermask_service/cli.py" in names
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "protos", "model_store")]
    assert "layermask = layermask_service.cli:main" in entry_points


@pytest.mark.slow
def test_imports_come_from_the_fresh_venv_not_the_checkout(installed: Installed) -> None:
    probe = ("import json, sys; import layermask, layermask_service, layermask_service.torchserve.handler as h; "
             "print(json.dumps({'files': [layermask.__file__, layermask_service.__file__, h.__file__], "
             "'prefix': sys.prefix, 'path': sys.path, "
             "'editable': [m for m in sys.modules if m.startswith('__editable__')]}))")
    found = json.loads(run([installed.python, "-c", probe], cwd=installed.workdir, env=installed.environment).stdout)
    print(found["files"])
    assert Path(found["prefix"]) == installed.venv
    for file in found["files"]:
        assert Path(file).is_relative_to(installed.site_packages), file
    assert found["editable"] == []
    assert set(installed.dependencies) <= set(found["path"])  # the .pth lines took effect
    checkout_paths = {entry for entry in found["path"] if entry and inside_checkout(entry)}
    assert checkout_paths <= set(installed.dependencies)
    assert not (installed.venv / "bin" / "torchserve").exists()  # so the service cannot find it next to python


@pytest.mark.slow
def test_archive_builds_a_mar_with_the_shipped_handler(model_store: Path) -> None:
    mar = model_store / f"{MODEL}.mar"
    assert zipfile.is_zipfile(mar)
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        handler = archive.read("layermask_handler.py")
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert {"MAR-INF/MANIFEST.json", f"{MODEL}.pt"} <= names
    assert handler == (ROOT / "service" / "layermask_service" / "torchserve" / "handler.py").read_bytes()
    assert config["layermask"]["model"] == MODEL


@pytest.mark.slow
def test_explain_writes_the_overlay(installed: Installed) -> None:
    work = installed.workdir
    Image.fromarray(data.chelsea()).save(work / "chelsea.png")
    run([installed.layermask, "explain", "chelsea.png", "--samples", "64", "--segmentation", "grid", "--seed", "0",
         "--top-labels", "1", "--no-progress", "-o", "overlay.png", "--json", "explanation.json"], cwd=work,
        env=installed.environment)
    with Image.open(work / "overlay.png") as overlay:
        assert overlay.format == "PNG" and min(overlay.size) > 0
    explanation = json.loads((work / "explanation.json").read_text())
    assert explanation["model"] == MODEL and explanation["num_samples"] == 64
    [label] = explanation["explanations"]
    assert label["label"] == explanation["top_predictions"][0]["label"]
    assert len(label["weights"]) == explanation["num_segments"] > 1


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    target: str
    log: Path

    def fail(self, why: str) -> None:
        pytest.fail(f"layermask serve {why}:\n{self.log.read_text(errors='replace')}")


@contextlib.contextmanager
def serve(installed: Installed, cwd: Path, *options: str, tmpdir: Path | None = None) -> Iterator[Serving]:
    """``layermask serve`` of the fresh venv on free loopback ports, run from ``cwd`` (with ``TMPDIR`` set to
    ``tmpdir`` if given); killed on exit if still up."""
    port, metrics_port = free_port(), free_port()
    log = cwd / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([str(installed.layermask), "serve", "--host", "127.0.0.1", "--port", str(port),
                                    "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
                                    "--grace-seconds", "5", *options],
                                   cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                   env={**installed.environment, **({"TMPDIR": str(tmpdir)} if tmpdir else {})})
    try:
        yield Serving(process, f"127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def health(target: str) -> int | None:
    """The server's overall health status, or ``None`` while it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return None
    return int(response.status)


def wait_until_serving(serving: Serving, bound: float) -> None:
    deadline = time.monotonic() + bound
    while health(serving.target) != health_pb2.HealthCheckResponse.SERVING:
        if serving.process.poll() is not None:
            serving.fail(f"exited {serving.process.returncode}")
        if time.monotonic() > deadline:
            serving.fail(f"was not SERVING within {bound:.0f} s")
        time.sleep(0.5)


def check_one_explanation(target: str) -> None:
    """One small Explain call: the top label explained, one weight per segment."""
    request = explain_request(png_bytes(data.chelsea()), segmentation="grid", num_samples=32, seed=0, top_labels=1)
    with ExplainClient(target, timeout=COMMAND_BOUND_S) as client:
        response = client.explain(request)
    assert response.model == MODEL and response.num_samples == 32
    [explanation] = response.explanations
    assert explanation.label == response.top_predictions[0].label
    assert len(explanation.weights) == len(np.unique(segments_from(response.segments))) > 1
    assert any(weight != 0 for weight in explanation.weights)


def stop_with_sigterm(serving: Serving) -> None:
    serving.process.send_signal(signal.SIGTERM)
    try:
        status = serving.process.wait(STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        serving.fail(f"did not stop within {STOP_BOUND_S:.0f} s of SIGTERM")
    if status != 0:
        serving.fail(f"exited {status} on SIGTERM")


@pytest.mark.slow
def test_serve_answers_explain_and_stops_on_sigterm(installed: Installed, tmp_path: Path) -> None:
    with serve(installed, tmp_path) as serving:
        wait_until_serving(serving, SERVE_BOUND_S)
        check_one_explanation(serving.target)
        stop_with_sigterm(serving)


def torchserve_config(installed: Installed, directory: Path) -> Path:
    """The shipped ``config.properties`` (and its ``metrics.yaml``) on free ports, in ``directory``."""
    shipped = installed.site_packages / "layermask_service" / "torchserve"
    shutil.copy(shipped / "metrics.yaml", directory / "metrics.yaml")
    text = (shipped / "config.properties").read_text()
    for key in PORT_KEYS:
        port = free_port()
        value = f"http://127.0.0.1:{port}" if key.endswith("address") else str(port)
        text, count = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        assert count == 1, key
    config = directory / "config.properties"
    config.write_text(text)
    return config


def frontend_group(pid_file: Path) -> int | None:
    """The process group of the TorchServe frontend named in its pid file (launcher, Java and workers), if it runs."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().split()[0])
        if b"org.pytorch.serve.ModelServer" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return os.getpgid(pid)
    return None


@pytest.mark.slow
@pytest.mark.torchserve
@pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java")
def test_serve_starts_torchserve_from_the_installed_package(installed: Installed, model_store: Path,
                                                            tmp_path: Path) -> None:
    """``--start-torchserve`` runs TorchServe on the fresh venv's interpreter, whose workers load the archived
    handler against the installed layermask; stopping the service stops TorchServe."""
    config = torchserve_config(installed, tmp_path)
    # TorchServeProcess keeps TorchServe's files in a new directory under TMPDIR (never in the working
    # directory, which may be read-only), with TorchServe's own TMPDIR inside it.
    scratch = Path(tempfile.mkdtemp(prefix="lm-", dir="/tmp"))  # short: TorchServe's sockets go below it
    pid_file = tmp_path / "no-pid-file-yet"
    try:
        with serve(installed, tmp_path, "--start-torchserve", str(model_store), "--torchserve-config",
                   str(config), tmpdir=scratch) as serving:
            wait_until_serving(serving, TORCHSERVE_BOUND_S)
            (pid_file,) = scratch.glob("layermask-torchserve-*/tmp/.model_server.pid")
            assert frontend_group(pid_file) is not None
            assert not (tmp_path / ".torchserve").exists()
            check_one_explanation(serving.target)
            stop_with_sigterm(serving)
            assert frontend_group(pid_file) is None, "TorchServe outlived the service"
    finally:
        for leftover in [pid_file, *scratch.glob("layermask-torchserve-*/tmp/.model_server.pid")]:
            group = frontend_group(leftover)
            if group is not None and group != os.getpgrp():  # left behind when the service was killed
                os.killpg(group, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
