"""The container image, built for real by `make image` and run the way a hardened cluster runs it.

A private dockerd (tests/helpers/docker.py) builds the Dockerfile on a Debian base made here with
mmdebstrap (no registry can be reached), then runs the image read-only, as 10001:10001, with
every capability dropped: once as the service on the embedded backend, once as TorchServe plus
a service sending it the masked batches. Everything is removed afterwards: containers, images,
the daemon (by its PID), its mounts and its directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from skimage import data

from layermask_service.client import ExplainClient, explain_request
from layermask_service.torchserve.process import free_port, parse_properties
from layermask_service.torchserve.resources import CONFIG, METRICS, copy_resource, read_resource
from tests.helpers.docker import DockerDaemon, import_debian_base, mounts_under, wait_until_healthy
from tests.helpers.service import png_bytes

pytestmark = [pytest.mark.image, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
HARDENED = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges"]
CHELSEA = png_bytes(data.chelsea())
HEALTHY_WITHIN = 600.0  # seconds: model load (and an archive build) on a loaded 2-core machine


@pytest.fixture(scope="module")
def daemon() -> Iterator[DockerDaemon]:
    docker = DockerDaemon()
    try:
        docker.start()
        yield docker
    finally:
        root = docker.root
        docker.close()
        assert not mounts_under(root), f"left mounted: {mounts_under(root)}"
        assert not root.exists()


@pytest.fixture(scope="module")
def image(daemon: DockerDaemon) -> Iterator[str]:
    """`make image` on an mmdebstrap base; its duration is printed (run pytest with -s to see it)."""
    tag = f"layermask-test:{uuid.uuid4().hex[:8]}"
    base = f"layermask-base-test:{uuid.uuid4().hex[:8]}"
    wheelhouse = ROOT / "build" / "wheelhouse"
    start = time.monotonic()
    try:
        import_debian_base(daemon, base)
        based = time.monotonic()
        result = subprocess.run(["make", "--no-print-directory", "image", f"IMAGE={tag}", f"BASE_IMAGE={base}"],
                                cwd=ROOT, env=daemon.env, capture_output=True, text=True, timeout=2400)
        assert result.returncode == 0, f"make image failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        print(f"\nimage: base {based - start:.0f} s, make image {time.monotonic() - based:.0f} s")
        yield tag
    finally:
        shutil.rmtree(wheelhouse, ignore_errors=True)  # 3 GB of wheels; `make image` downloads them again


def run_detached(daemon: DockerDaemon, image: str, *args: str, env: dict[str, str] | None = None,
                 extra: tuple[str, ...] = ()) -> str:
    name = f"lm-{uuid.uuid4().hex[:8]}"
    flags = [flag for key, value in (env or {}).items() for flag in ("--env", f"{key}={value}")]
    daemon.docker("run", "--detach", "--name", name, *HARDENED, *flags, *extra, image, *args)
    return name


def stop_and_exit_code(daemon: DockerDaemon, container: str) -> int:
    """SIGTERM, as Kubernetes and `docker stop` send it, and the exit code once the container has stopped."""
    daemon.docker("kill", "--signal", "TERM", container)
    return int(daemon.docker("wait", container, timeout=120).strip())


def explain_through(target: str) -> tuple[int, int]:
    """An Explain call from the host; the top label and the number of segment weights."""
    request = explain_request(CHELSEA, segmentation="slic", segmentation_params={"n_segments": 30}, num_samples=64,
                              seed=0)
    with ExplainClient(target, timeout=300) as client:
        response = client.explain(request)
    return response.top_predictions[0].label, len(response.explanations[0].weights)


def test_image_contents(daemon: DockerDaemon, image: str) -> None:
    """Runs as 10001, no compiler or pip, the GPU build of ONNX Runtime, a JRE, the HEALTHCHECK."""
    probe = ("import os, shutil, onnxruntime, torch; "
             "print(os.getuid(), os.getgid(), shutil.which('gcc'), shutil.which('cc'), shutil.which('pip'), "
             "'CUDAExecutionProvider' in onnxruntime.get_available_providers(), torch.__version__, "
             "shutil.which('java') is not None)")
    out = daemon.docker("run", "--rm", *HARDENED, "--entrypoint", "python", image, "-c", probe).split()
    assert out == ["10001", "10001", "None", "None", "None", "True", "2.14.1+cu130", "True"], out
    config = daemon.inspect(image)["Config"]
    assert config["User"] == "10001:10001"
    assert "layermask_service.healthcheck" in " ".join(config["Healthcheck"]["Test"])


def test_service_container(daemon: DockerDaemon, image: str) -> None:
    port, metrics_port = free_port(), free_port()
    container = run_detached(daemon, image, env={"LAYERMASK_HOST": "127.0.0.1", "LAYERMASK_PORT": str(port),
                                                 "LAYERMASK_METRICS_PORT": str(metrics_port)})
    try:
        wait_until_healthy(daemon, container, HEALTHY_WITHIN)
        label, weights = explain_through(f"127.0.0.1:{port}")
        assert weights > 0 and 280 < label < 300, label  # a cat class for chelsea
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            assert 'layermask_requests_total{code="OK",rpc="Explain"} 1.0' in response.read().decode()
        assert stop_and_exit_code(daemon, container) == 0, daemon.logs(container)
        assert "Traceback" not in daemon.logs(container, tail=1000)
    finally:
        daemon.docker("rm", "-f", container, check=False)


def torchserve_config(directory: Path) -> dict[str, str]:
    """The shipped TorchServe config with free loopback ports, readable by the container's user."""
    properties = parse_properties(read_resource(CONFIG))
    for key in ("inference_address", "management_address", "metrics_address"):
        properties[key] = f"http://127.0.0.1:{free_port()}"
    for key in ("grpc_inference_port", "grpc_management_port"):
        properties[key] = str(free_port())
    copy_resource(METRICS, directory)
    (directory / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    os.chmod(directory, 0o755)
    for path in directory.iterdir():
        os.chmod(path, 0o644)
    return properties


def test_torchserve_and_service_containers(daemon: DockerDaemon, image: str, tmp_path: Path) -> None:
    """The pod of the gpu overlay on one host: TorchServe in one container, the service in another."""
    properties = torchserve_config(tmp_path)
    ping = f"{properties['inference_address']}/ping"
    torchserve = run_detached(
        daemon, image, "torchserve", "--model-store", "/tmp/model-store",
        "--config", "/etc/torchserve/config.properties",
        extra=("--volume", f"{tmp_path}:/etc/torchserve:ro",
               "--health-cmd", f"python -m layermask_service.healthcheck --torchserve-ping {ping}",
               "--health-interval", "5s"))
    service = ""
    try:
        wait_until_healthy(daemon, torchserve, HEALTHY_WITHIN)
        port = free_port()
        service = run_detached(daemon, image, "serve", "--backend", "torchserve", "--torchserve-target",
                               f"127.0.0.1:{properties['grpc_inference_port']}",
                               env={"LAYERMASK_HOST": "127.0.0.1", "LAYERMASK_PORT": str(port),
                                    "LAYERMASK_METRICS_PORT": str(free_port())})
        wait_until_healthy(daemon, service, HEALTHY_WITHIN)
        label, weights = explain_through(f"127.0.0.1:{port}")
        assert weights > 0 and 280 < label < 300, label
        with urllib.request.urlopen(f"{properties['metrics_address']}/metrics", timeout=10) as response:
            served = [line for line in response.read().decode().splitlines()
                      if line.startswith("ts_inference_requests_total")]
        assert served and float(served[0].rsplit(" ", 1)[1]) >= 2, served  # model_info + masked batches
        assert stop_and_exit_code(daemon, service) == 0, daemon.logs(service)
        assert stop_and_exit_code(daemon, torchserve) == 0, daemon.logs(torchserve)
    finally:
        for container in (service, torchserve):
            if container:
                daemon.docker("rm", "-f", container, check=False)

