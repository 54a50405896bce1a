"""``layermask archive``: a TorchServe model archive (``.mar``) serving one layermask model.

The archive holds the handler (``layermask_service/torchserve/handler.py``, package data), the weights (a state dict, or
the exported layer-masked ONNX model for ``--format onnx``) and a ``model-config.yaml`` with
TorchServe's batching settings and the handler's own (section ``layermask``). It is built with
``torch-model-archiver``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from layermask.models.registry import load_model
from layermask.onnx.export import export_onnx
from layermask_service.torchserve.context_cache import DEFAULT_CACHE_ENTRIES
from layermask_service.torchserve.process import console_script
from layermask_service.torchserve.resources import HANDLER, copy_resource

FORMATS = ("torch", "onnx")


@dataclass(frozen=True)
class ArchiveSettings:
    """TorchServe's per-model settings written into ``model-config.yaml``.

    ``batch_size`` requests are gathered for up to ``max_batch_delay_ms``; the handler then runs
    their rows in passes of at most ``max_rows_per_forward``. ``response_timeout_s`` must cover a
    whole explanation on TorchServe's REST API. Each worker keeps the images and segments of the
    last ``context_cache_entries`` explanations, so their batches can name them by digest.
    """

    batch_size: int = 8
    max_batch_delay_ms: int = 5
    workers: int = 1
    response_timeout_s: int = 600
    max_rows_per_forward: int = 64
    context_cache_entries: int = DEFAULT_CACHE_ENTRIES

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < (0 if name in ("max_batch_delay_ms", "context_cache_entries") else 1):
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value}")


def model_config(model: str, fmt: str, settings: ArchiveSettings) -> dict[str, object]:
    return {
        "minWorkers": settings.workers, "maxWorkers": settings.workers, "batchSize": settings.batch_size,
        "maxBatchDelay": settings.max_batch_delay_ms, "responseTimeout": settings.response_timeout_s,
        "layermask": {"model": model, "format": fmt, "max_rows_per_forward": settings.max_rows_per_forward,
                      "context_cache_entries": settings.context_cache_entries},
    }


def build_archive(model: str, output: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None,
                  fmt: str = "torch", settings: ArchiveSettings | None = None) -> Path:
    """Write ``<output>/<model>.mar`` and return its path. Loading errors are the registry's (``KeyError``, …)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    settings = settings or ArchiveSettings()
    archiver = console_script("torch-model-archiver")  # before the slow part: fails without layermask[torchserve]
    loaded = load_model(model, weights)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="layermask-archive-") as tmp:
        if fmt == "onnx":
            serialized = export_onnx(loaded, Path(tmp) / f"{model}.onnx")
        else:
            serialized = Path(tmp) / f"{model}.pt"
            torch.save(loaded.torch_network().state_dict(), serialized)
        handler = copy_resource(HANDLER, Path(tmp), "layermask_handler.py")
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(model_config(model, fmt, settings), sort_keys=False))
        command = [*archiver, "--model-name", model,
                   "--version", "1.0", "--serialized-file", str(serialized), "--handler", str(handler),
                   "--config-file", str(config), "--export-path", str(out), "--force"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise OSError(f"torch-model-archiver failed: {(result.stderr or result.stdout).strip()}")
    return out / f"{model}.mar"
