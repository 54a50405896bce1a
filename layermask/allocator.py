"""Process-wide glibc allocator settings for fast repeated forward passes (Linux only).

A forward pass allocates activation buffers of tens of MiB and frees them again. By default glibc
serves such blocks with ``mmap`` and gives them back to the kernel on ``free``, so every pass
page-faults its buffers in anew (measured here: ~30 % of the layer-masked forward's time, and as
much of the plain model's). Worker threads also get malloc arenas of their own, which trim freed
memory the same way. :func:`keep_freed_memory` makes glibc keep and reuse that memory instead.

It changes the whole process, so the library never calls it on import: the ``layermask`` command,
the service and the TorchServe handler call it at start; programs using the library may too.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's main heap (one arena, no ``mmap``) and never trim it.

    Freed activation buffers then stay mapped and are reused by the next pass; the resident size
    settles at the peak of one pass. Returns False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
        return all(bool(libc.mallopt(parameter, value)) for parameter, value in settings)
    except (OSError, AttributeError):
        return False
