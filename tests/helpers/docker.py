"""A private Docker daemon for the image tests, and the commands they run against it.

The daemon runs as this test process's child with its own data root, exec root and socket in a
temporary directory (no bridge, no iptables: containers use ``--network host``), so it touches no
other Docker on the host. :meth:`DockerDaemon.close` removes every container and image, stops
the daemon by its PID, unmounts whatever it left mounted under its directory, and deletes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers.service import wait_for


def mounts_under(directory: Path) -> list[str]:
    """Mount points (from /proc/mounts) at or below ``directory``, deepest first."""
    prefix = str(directory.resolve())
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


class DockerDaemon:
    def __init__(self) -> None:
        for tool in ("dockerd", "docker"):
            if shutil.which(tool) is None:
                raise FileNotFoundError(f"{tool} not found: `make system-packages` installs docker.io")
        self.root = Path(tempfile.mkdtemp(prefix="lm-docker-"))  # short: a unix socket path has ≤ 107 bytes
        self.socket = self.root / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, bound: float = 120.0) -> None:
        command = ["dockerd", "--iptables=false", "--bridge=none", "--data-root", str(self.root / "data"),
                   "--exec-root", str(self.root / "exec"), "--host", f"unix://{self.socket}",
                   "--pidfile", str(self.root / "docker.pid")]
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._answers(), bound, "dockerd to answer", interval=0.5)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise OSError(f"dockerd exited with {self.process.returncode}: {self.log_tail()}")
        return subprocess.run(["docker", "info"], env=self.env, capture_output=True).returncode == 0

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 300, **kwargs: Any) -> str:
        """Run ``docker ARGS`` against this daemon and return its stdout (``CalledProcessError`` on failure)."""
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                **kwargs)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, ["docker", *args], result.stdout, result.stderr)
        return result.stdout

    def logs(self, container: str, tail: int = 40) -> str:
        result = subprocess.run(["docker", "logs", "--tail", str(tail), container], env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return result.stdout

    def inspect(self, container: str) -> dict[str, Any]:
        return dict(json.loads(self.docker("inspect", container))[0])

    def health(self, container: str) -> str:
        state = self.inspect(container)["State"]
        if not state["Running"]:
            raise OSError(f"container {container} stopped (exit {state['ExitCode']}):\n{self.logs(container)}")
        return str(state.get("Health", {}).get("Status", "none"))

    def close(self) -> None:
        """Remove containers and images, stop the daemon by PID, unmount its leftovers, delete its directory."""
        try:
            if self.process is not None and self.process.poll() is None:
                for container in self.docker("ps", "-aq", check=False, timeout=60).split():
                    self.docker("rm", "-f", container, check=False, timeout=120)
                self.docker("image", "prune", "-af", check=False, timeout=300)
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(30)
        finally:
            for point in mounts_under(self.root):  # the netns bind mount and any overlay left behind
                subprocess.run(["umount", "-l", point], capture_output=True)
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)

    def __enter__(self) -> DockerDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_debian_base(daemon: DockerDaemon, tag: str, release: str = "bookworm") -> None:
    """A minimal Debian with Python 3.11 made by mmdebstrap from the package archive, imported as ``tag``."""
    if shutil.which("mmdebstrap") is None:
        raise FileNotFoundError("mmdebstrap not found: `make system-packages` installs it")
    command = (f"mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates {release} - "
               f"| docker import - {tag}")
    subprocess.run(["bash", "-o", "pipefail", "-c", command], env=daemon.env, check=True, capture_output=True,
                   timeout=600)


def wait_until_healthy(daemon: DockerDaemon, container: str, bound: float) -> None:
    deadline = time.monotonic() + bound
    while (status := daemon.health(container)) != "healthy":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{container} not healthy within {bound:.0f} s (now {status}):\n"
                               f"{daemon.logs(container)}")
        time.sleep(1.0)
