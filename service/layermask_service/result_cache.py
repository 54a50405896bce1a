"""The service's result cache: finished ``ExplainResponse``s by what determines them.

An explanation is a function of the model (its name and the digest of its weights), the image
bytes, the checked options (seed included) and the heatmaps asked for, so a repeated request can
be answered with the stored response, byte for byte, timings included. Only requests that set
``seed`` are cached: one that leaves it unset asks for the default seed without saying so, and a
client that wants a fresh explanation each time should not have to know that the server caches.

The cache is a least-recently-used map of serialized responses bounded in bytes (setting
``cache_mib``; 0 turns it off). Hits and misses of cacheable requests are counted in the metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from layermask.explanation.options import ExplainOptions
from layermask.models.registry import LoadedModel
from layermask_service.metrics import Metrics
from layermask_service.translate import HeatmapChoice

__all__ = ["ResultCache", "cache_key", "weights_digest"]

MIB = 1024 * 1024


def weights_digest(model: LoadedModel) -> str:
    """The lowercase hex SHA-256 of ``model``'s weights: of its state dict (each tensor's name, dtype,
    shape and bytes, in order) for a PyTorch network, of the file for an exported ONNX model.

    Computed once, when a model is loaded (the embedded backend, TorchServe's handler).
    """
    digest = hashlib.sha256()
    if model.network is not None:
        for name, tensor in model.network.state_dict().items():
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    path = getattr(model.masked_runtime, "path", None)
    if path is None:
        raise ValueError(f"model {model.name!r} has neither a PyTorch network nor a model file to digest")
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """``value`` as JSON-able data that is equal exactly when the option values are."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"ndarray": [list(data.shape), data.dtype.str, hashlib.sha256(data.tobytes()).hexdigest()]}
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def cache_key(model: str, digest: str, image: bytes, options: ExplainOptions, heatmap: HeatmapChoice) -> bytes:
    """The SHA-256 of everything an explanation's response depends on."""
    described = {"model": model, "weights": digest, "image": hashlib.sha256(image).hexdigest(),
                 "options": _canonical(options), "heatmap": [int(heatmap.format), int(heatmap.view)]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).digest()


class ResultCache:
    """A thread-safe LRU of serialized responses whose sizes (key and value bytes) sum to at most ``max_bytes``.

    A response larger than ``max_bytes`` is not stored. ``max_bytes`` 0: nothing is stored and
    nothing counted.
    """

    def __init__(self, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def of_mib(cls, mib: float, metrics: Metrics | None = None) -> ResultCache:
        return cls(int(mib * MIB), metrics)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: bytes) -> bytes | None:
        """The stored response for ``key`` (now the most recently used), or ``None``; counted as a hit or a miss."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
        if self.metrics is not None:
            (self.metrics.cache_misses if value is None else self.metrics.cache_hits).inc()
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value``, evicting the least recently used entries until it fits."""
        size = len(key) + len(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(key) + len(old)
            while self._entries and self._bytes + size > self.max_bytes:
                evicted_key, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted_key) + len(evicted)
            self._entries[key] = value
            self._bytes += size
            used = self._bytes
        if self.metrics is not None:
            self.metrics.cache_bytes.set(used)
