"""Server settings, from defaults, a TOML file, ``LAYERMASK_*`` environment variables and flags
(later sources win)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from layermask.devices import resolve_device
from layermask.models.registry import DEFAULT_MODEL
from layermask.onnx.runtime import PREFERRED_PROVIDERS
from layermask_service.auth import read_tokens
from layermask_service.torchserve.endpoints import parse_target

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_SAMPLES = 20_000  # the most perturbations one request may ask for
"""The default limit on a gRPC message, both ways: the service's, its client's and its TorchServe channel's."""


@dataclass(frozen=True)
class Settings:
    host: str = "localhost"
    port: int = 50051
    metrics_host: str = "localhost"
    metrics_port: int = 9464
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    weights: Mapping[str, str] = field(default_factory=dict)  # model name -> local weights (or .onnx) file
    format: str = "torch"        # "onnx": run the layer-masked models with ONNX Runtime
    onnx_providers: tuple[str, ...] = PREFERRED_PROVIDERS
    device: str = "cpu"          # "cuda", "cuda:N": where the embedded backend runs format "torch" models
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_concurrent: int = 1      # explanations computed at once
    max_queue: int = 4           # explanations waiting; past that, RESOURCE_EXHAUSTED
    grace_seconds: float = 30.0  # SIGTERM: how long in-flight calls may finish
    max_samples: int = MAX_SAMPLES
    batch_size: int | None = None
    cache_mib: float = 64.0      # the result cache of explanations that set a seed (result_cache.py); 0: off
    backend: str = "embedded"    # "torchserve": masked batches run in TorchServe at torchserve_target
    # TorchServe's gRPC inference API: host:port, a list host1:port1,host2:port2, or dns:///name:port
    # (resolved every 15 s); each batch goes to the next address (torchserve/endpoints.py).
    torchserve_target: str = "localhost:7070"
    torchserve_timeout: float = 120.0          # seconds per call to TorchServe
    torchserve_send_context_once: bool = True  # each explanation's image and segments once, then a digest
    health_interval: float = 2.0               # seconds between backend health checks
    # Security (docs/security.md). PEM files; all None: plaintext gRPC that anyone reaching the port may call.
    tls_cert_file: str | None = None           # with tls_key_file: gRPC over TLS
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None      # also require client certificates this CA signed (mTLS)
    metrics_tls_cert_file: str | None = None   # with metrics_tls_key_file: /metrics over HTTPS
    metrics_tls_key_file: str | None = None
    auth_token_file: str | None = None         # accepted bearer tokens, one a line; health/reflection exempt

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be a TCP port (0-65535), got {getattr(self, name)}")
        for name in ("max_message_bytes", "max_concurrent", "max_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_queue < 0 or self.grace_seconds < 0 or not self.cache_mib >= 0:
            raise ValueError("max_queue, grace_seconds and cache_mib must not be negative")
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.format not in ("torch", "onnx"):
            raise ValueError(f"format must be 'torch' or 'onnx', got {self.format!r}")
        if self.backend not in ("embedded", "torchserve"):
            raise ValueError(f"backend must be 'embedded' or 'torchserve', got {self.backend!r}")
        if not self.torchserve_timeout > 0 or not self.health_interval > 0:
            raise ValueError("torchserve_timeout and health_interval must be positive")
        if self.device != "cpu" and (self.backend, self.format) != ("embedded", "torch"):
            raise ValueError(f"device: {self.device!r} applies to the embedded backend with format 'torch' only "
                             "(ONNX Runtime's device follows onnx_providers; TorchServe assigns its workers' GPUs)")
        resolve_device(self.device)
        parse_target(self.torchserve_target)  # ValueError naming torchserve_target
        self._check_security_files()

    def _check_security_files(self) -> None:
        """Each file given exists and is readable, pairs come together, and the token file has a token."""
        for name in _FILE_SETTINGS:
            path = getattr(self, name)
            if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise ValueError(f"{name}: no readable file {path}")
        for cert, key in (("tls_cert_file", "tls_key_file"), ("metrics_tls_cert_file", "metrics_tls_key_file")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} go together: give both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if self.auth_token_file is not None:
            read_tokens(self.auth_token_file)  # ValueError naming auth_token_file; an empty file is one


_FILE_SETTINGS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "metrics_tls_cert_file",
                  "metrics_tls_key_file", "auth_token_file")


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if isinstance(value, str) and name in ("models", "onnx_providers"):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, str) and name == "weights":
        return dict(item.split("=", 1) for item in value.split(",") if item)
    if name in ("models", "onnx_providers"):
        return tuple(value)
    if name in _FILE_SETTINGS:  # LAYERMASK_TLS_CERT_FILE="" (an unset template variable) means none
        return str(value) if value not in ("", None) else None
    if kind in ("int", "int | None") and value is not None:
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool" and isinstance(value, str):
        if value.strip().lower() not in _BOOLEANS:
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return _BOOLEANS[value.strip().lower()]
    return value


def load_settings(config: Path | None = None, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from ``config`` (TOML, a ``[server]`` table or top-level keys), then the environment
    (``LAYERMASK_PORT``, ``LAYERMASK_MODELS=a,b``, …), then ``overrides`` (command-line flags)."""
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"config file not found: {config}")
        data = tomllib.loads(config.read_text())
        table = data.get("server", data)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) in {config}: {', '.join(unknown)}")
        values.update(table)
    environ = os.environ if environ is None else environ
    for name in known:
        if f"LAYERMASK_{name.upper()}" in environ:
            values[name] = environ[f"LAYERMASK_{name.upper()}"]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return dataclasses.replace(Settings(), **{k: _coerce(k, v) for k, v in values.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid settings: {error}") from None
