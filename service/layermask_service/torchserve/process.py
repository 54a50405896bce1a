"""Starting and stopping a local TorchServe with layermask archives (``make run-torchserve``, tests, benchmarks).

TorchServe runs in a process group of its own (its launcher, the Java frontend and the Python
workers), so that :meth:`TorchServeProcess.stop` and :meth:`~TorchServeProcess.kill` end all of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from layermask_service.proto import inference_pb2_grpc as ts_grpc
from layermask_service.torchserve.resources import CONFIG, METRICS, copy_resource, read_resource

PORT_KEYS = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
             "grpc_management_port")


def console_script(name: str) -> list[str]:
    """The command that runs the installed console script ``name`` (``torchserve``, ``torch-model-archiver``) on
    this interpreter; ``FileNotFoundError`` (one line, naming the extra to install) if no installed
    distribution provides it.

    The script's entry point is read from the installed distributions' metadata and called with
    ``sys.executable -P -c``, as the script itself would call it. So the script file need not lie
    next to ``sys.executable`` nor on PATH (a ``pip install --user``, whose scripts are in
    ``~/.local/bin``; a ``--target`` or PYTHONPATH install; packages shared from another environment),
    and TorchServe, which starts its Python workers with its launcher's ``sys.executable``, runs them
    on this interpreter, where layermask is installed. ``-P`` keeps the working directory off
    ``sys.path``: no local file shadows an installed module.
    """
    found = entry_points(group="console_scripts", name=name)
    if not found or not sys.executable:
        raise FileNotFoundError(f"{name} not found; install TorchServe support: pip install 'layermask[torchserve]'")
    entry = next(iter(found))
    code = (f"import sys; sys.argv[0] = {name!r}; from {entry.module} import {entry.attr.split('.')[0]}; "
            f"sys.exit({entry.attr}())")
    return [sys.executable, "-P", "-c", code]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (comments and blank lines skipped)."""
    properties = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


class TorchServeProcess:
    """One TorchServe serving the ``.mar`` files of ``model_store``.

    ``ports`` maps :data:`PORT_KEYS` to port numbers; by default the ports of ``config`` are used,
    or free ones with ``free_ports=True``. Logs go to ``workdir`` (a temporary directory by default).
    """

    def __init__(self, model_store: str | os.PathLike[str], models: list[str], *, config: Path | None = None,
                 free_ports: bool = False, workdir: str | os.PathLike[str] | None = None) -> None:
        self.model_store = Path(model_store).resolve()
        self.models = models
        # The shipped config.properties (package data) unless ``config`` names another; a relative
        # metrics_config is relative to the config file (the shipped one to the shipped metrics.yaml).
        self.properties = parse_properties(read_resource(CONFIG) if config is None else Path(config).read_text())
        metrics_config = self.properties.get("metrics_config")
        self._shipped_metrics = config is None and metrics_config == METRICS
        if metrics_config and config is not None and not Path(metrics_config).is_absolute():
            self.properties["metrics_config"] = str(Path(config).resolve().parent / metrics_config)
        self.properties["model_store"] = str(self.model_store)
        if free_ports:
            for key in PORT_KEYS:
                port = free_port()
                self.properties[key] = f"http://127.0.0.1:{port}" if key.endswith("address") else str(port)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="layermask-torchserve-")).resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None

    @property
    def grpc_target(self) -> str:
        host = self.properties.get("grpc_inference_address", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # a wildcard bind is reached on loopback
        return f"{host}:{self.properties['grpc_inference_port']}"

    def listen_publicly(self, host: str) -> None:
        """Bind the gRPC inference API and the metrics to ``host`` (``0.0.0.0`` in a pod), so that
        services and Prometheus in other pods reach them; the REST inference and management APIs
        stay where the config puts them (loopback in the shipped one)."""
        self.properties["grpc_inference_address"] = host
        port = self.properties["metrics_address"].rsplit(":", 1)[1]
        self.properties["metrics_address"] = f"http://{host}:{port}"

    @property
    def inference_url(self) -> str:
        return self.properties["inference_address"]

    @property
    def metrics_url(self) -> str:
        return self.properties["metrics_address"] + "/metrics"

    def start(self, timeout: float = 180.0) -> None:
        """Start TorchServe and wait until every model has a ready worker (``TimeoutError`` otherwise)."""
        if shutil.which("java") is None:
            raise FileNotFoundError("TorchServe needs Java (a JRE 11+) on PATH")
        launcher = console_script("torchserve")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._shipped_metrics:
            self.properties["metrics_config"] = str(copy_resource(METRICS, self.workdir))
        config = self.workdir / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()))
        # TorchServe keeps its pid file (TMPDIR), worker sockets and unpacked archives (TEMP) in
        # temporary directories; a directory of its own lets several run on one host.
        scratch = scratch_directory(self.workdir)
        self._scratch = scratch
        environment = {**os.environ, "LOG_LOCATION": str(self.workdir / "logs"),
                       "METRICS_LOCATION": str(self.workdir / "logs"), "TEMP": str(scratch), "TMPDIR": str(scratch)}
        command = [*launcher, "--start", "--foreground", "--ncs",
                   "--model-store", str(self.model_store), "--ts-config", str(config), "--disable-token-auth",
                   "--models", *[f"{name}={name}.mar" for name in self.models]]
        with open(self.workdir / "torchserve.log", "ab") as log:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=environment, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise OSError(f"TorchServe exited with status {self.process.returncode}; see "
                                   f"{self.workdir / 'torchserve.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"TorchServe was not healthy within {timeout:.0f} s; see {self.workdir}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        """Whether TorchServe answers Ping and every model has a READY worker (Ping alone does not
        wait for the workers)."""
        with grpc.insecure_channel(self.grpc_target) as channel:
            try:
                response = ts_grpc.InferenceAPIsServiceStub(channel).Ping(empty_pb2.Empty(), timeout=2)
            except grpc.RpcError:
                return False
        return is_healthy(response.health) and all(self.worker_ready(name) for name in self.models)

    def worker_ready(self, model: str) -> bool:
        """Whether the management API lists a READY worker for ``model``."""
        url = f"{self.properties['management_address']}/models/{model}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                description = json.loads(response.read())
        except (OSError, ValueError):
            return False
        return any(w.get("status") == "READY" for entry in description for w in entry.get("workers", []))

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """End TorchServe abruptly (as a crash would)."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)

    def stop(self) -> None:
        """Stop TorchServe and its workers; kill them if they do not stop within 20 s."""
        self._signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # workers may outlive the launcher
                os.killpg(self.process.pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._scratch is not None and self.workdir not in self._scratch.parents:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TorchServeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_SCRATCH_PATH = 80
"""TorchServe's worker sockets are ``<TMPDIR>/.ts.sock.<port>``; an AF_UNIX path holds at most 107 bytes."""


def scratch_directory(workdir: Path) -> Path:
    """TorchServe's TMPDIR: ``workdir/tmp``, or a new directory under /tmp when that path is too long for
    the worker sockets (a deep working directory made every worker fail with "AF_UNIX path too long")."""
    scratch = workdir / "tmp"
    if len(str(scratch)) > MAX_SCRATCH_PATH:
        return Path(tempfile.mkdtemp(prefix="lm-ts-", dir="/tmp"))
    scratch.mkdir(exist_ok=True)
    return scratch


def is_healthy(health: str) -> bool:
    """TorchServe's Ping answer is JSON like ``{"status": "Healthy"}`` (or "Partial Healthy", "Unhealthy")."""
    try:
        return bool(json.loads(health).get("status") == "Healthy")
    except (ValueError, AttributeError):
        return False
