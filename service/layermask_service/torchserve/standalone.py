"""``layermask torchserve``: TorchServe alone, serving layermask's handler, in the foreground.

This is the TorchServe container of a pod (or a GPU host): it builds any missing ``.mar`` archive
into the model store (a volume or ``/tmp`` under a read-only root filesystem), starts TorchServe
with its logs and scratch files in a temporary directory, and stops it on SIGTERM or SIGINT.
The layermask services elsewhere send it masked batches (``--backend torchserve``).
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from layermask_service.torchserve.archive import build_archive
from layermask_service.torchserve.process import TorchServeProcess

log = logging.getLogger("layermask.torchserve")


@dataclass(frozen=True)
class StandaloneSettings:
    model_store: Path
    models: tuple[str, ...]
    config: Path | None = None       # config.properties; the shipped one (every port on 127.0.0.1) by default
    public_host: str | None = None   # where gRPC inference and metrics listen; the management API stays local
    workdir: Path | None = None      # logs and scratch; a new temporary directory by default
    start_timeout: float = 600.0     # seconds until every model has a ready worker


def prepare_model_store(model_store: Path, models: tuple[str, ...]) -> None:
    """Build the archive of each model that ``model_store`` lacks."""
    model_store.mkdir(parents=True, exist_ok=True)
    for name in models:
        if not (model_store / f"{name}.mar").is_file():
            log.info("building %s", model_store / f"{name}.mar")
            build_archive(name, model_store)


def run_standalone(settings: StandaloneSettings) -> None:
    """Serve until SIGTERM/SIGINT (then stop TorchServe and return) or until TorchServe dies (``OSError``)."""
    prepare_model_store(settings.model_store, settings.models)
    torchserve = TorchServeProcess(settings.model_store, list(settings.models), config=settings.config,
                                   workdir=settings.workdir)
    if settings.public_host:
        torchserve.listen_publicly(settings.public_host)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("starting TorchServe (gRPC inference %s, logs in %s)", torchserve.grpc_target, torchserve.workdir)
    try:
        torchserve.start(timeout=settings.start_timeout)
        log.info("TorchServe ready: %s", ", ".join(settings.models))
        while not stop.wait(1.0):
            if torchserve.process is not None and torchserve.process.poll() is not None:
                raise OSError(f"TorchServe exited with status {torchserve.process.returncode}; "
                              f"see {torchserve.workdir / 'torchserve.log'}")
        log.info("stopping TorchServe")
    finally:
        torchserve.stop()
