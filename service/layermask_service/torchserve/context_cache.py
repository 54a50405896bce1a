"""An explanation's image and segments, sent to TorchServe once and then named by their digest.

Every masked batch of a LIME explanation scores the same preprocessed image (0.6 MB as float32
at 224²) over the same segment map; only the keep rows change. The service's TorchServe backend
sends the image and segments with the first batch, together with :func:`context_digest`; the
handler keeps them in a :class:`ContextCache` and later batches carry the digest alone
(``protos/layermask/v1/backend.proto``, ``MaskedBatchRequest.context_digest``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_CACHE_ENTRIES = 32  # ~0.7 MB each at 224²: about 22 MB per worker
UNKNOWN_DIGEST_STATUS = 409  # HandlerError status: repeat the request with the image and segments


class UnknownContext(LookupError):
    """A request names its image and segments by a digest this handler does not hold."""


def context_digest(float32_data: bytes, segments_zlib: bytes) -> str:
    """The lowercase hex SHA-256 of the image's float32 bytes followed by the segments' zlib bytes."""
    digest = hashlib.sha256(float32_data)
    digest.update(segments_zlib)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExplanationContext:
    """The decoded image (1×3×H×W) and segment map (H×W) that a digest names."""

    image: torch.Tensor
    segments: np.ndarray


class ContextCache:
    """A bounded, thread-safe least-recently-used map from digest to :class:`ExplanationContext`."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError(f"context_cache_entries: must not be negative, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, ExplanationContext] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, digest: str, context: ExplanationContext) -> None:
        with self._lock:
            self._entries[digest] = context
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, digest: str) -> ExplanationContext | None:
        with self._lock:
            context = self._entries.get(digest)
            if context is not None:
                self._entries.move_to_end(digest)
            return context

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
