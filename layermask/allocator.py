"""Process-wide glibc allocator settings for fast repeated forward passes (Linux only).

A forward pass allocates activation buffers of tens of MiB and frees them again. By default glibc
serves such blocks with ``mmap`` and gives them back to the kernel on ``free``, so every pass
page-faults its buffers in anew (measured here: ~30 % of the layer-masked forward's time, and as
much of the plain model's). Worker threads also get malloc arenas of their own, which trim freed
memory the same way. :func:`keep_freed_memory` makes glibc keep and reuse that memory instead.

It changes the whole process, so the library never calls it on import. It is switched on at the
first explanation or layer-masked forward pass instead (:func:`keep_freed_memory_by_default`,
called by :func:`layermask.explain` and :class:`layermask.LayerMaskedModel`), unless the process
opts out: ``LAYERMASK_KEEP_FREED_MEMORY=0`` in the environment, or ``keep_freed_memory=False``
passed to the first :func:`layermask.explain`. What changes for the rest of the process: every
``malloc`` comes from one heap (no per-thread arenas, no ``mmap`` for large blocks) and freed
memory is never given back to the kernel, so the resident size stays at its peak. The
``layermask`` command, the service and the TorchServe handler call :func:`keep_freed_memory` at
start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["ENV_VAR", "freed_memory_kept", "keep_freed_memory", "keep_freed_memory_by_default"]

log = logging.getLogger(__name__)

ENV_VAR = "LAYERMASK_KEEP_FREED_MEMORY"
"""Set to ``0`` (or ``false``, ``no``, ``off``) to stop layermask switching the allocator on by itself."""

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1

_state = {"kept": False, "decided": False}


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's main heap (one arena, no ``mmap``) and never trim it.

    Freed activation buffers then stay mapped and are reused by the next pass; the resident size
    settles at the peak of one pass. It lasts for the life of the process. Returns False where the
    C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
        kept = all(bool(libc.mallopt(parameter, value)) for parameter, value in settings)
    except (OSError, AttributeError):
        kept = False
    _state["kept"] = _state["kept"] or kept
    _state["decided"] = True
    return kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has succeeded in this process."""
    return _state["kept"]


def _opted_out_by_environment() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("0", "false", "no", "off")


def keep_freed_memory_by_default(enabled: bool | None = None) -> bool:
    """Switch :func:`keep_freed_memory` on for this process, once, unless it has opted out.

    ``enabled=None`` (what explanations and masked forward passes pass) switches it on at the first
    call unless ``LAYERMASK_KEEP_FREED_MEMORY=0``; ``False`` opts this process out (later automatic
    calls change nothing; :func:`keep_freed_memory` still works); ``True`` switches it on whatever
    the environment says. Returns :func:`freed_memory_kept`.
    """
    if enabled is True and not _state["kept"]:
        keep_freed_memory()
    elif not _state["decided"]:
        _state["decided"] = True
        if enabled is False or _opted_out_by_environment():
            log.debug("layermask leaves glibc's allocator as it is (%s)",
                      "keep_freed_memory=False" if enabled is False else f"{ENV_VAR}=0")
        elif keep_freed_memory():
            log.debug("layermask: glibc now keeps freed memory for reuse in this process (one arena, no mmap, "
                      "no trim); set %s=0 or pass keep_freed_memory=False to the first explain to opt out", ENV_VAR)
    return _state["kept"]
