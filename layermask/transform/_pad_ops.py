"""Explicit zero padding of activations (``ZeroPad2d``, ``F.pad``, TF-style 'same' padding).

The converter keeps such padding pending on the activation (:class:`~layermask.transform._spatial.Spatial`)
so that a convolution can apply it as its own; these functions combine and apply it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layermask.transform._kernel_choice import use_portable_kernels

Pad = tuple[int, int, int, int]
"""A 2-D zero padding as ``(left, right, top, bottom)``, the order ``F.pad`` takes."""


def add_pads(first: Pad, second: Pad) -> Pad:
    """Two explicit zero paddings applied one after the other, as one."""
    left, right, top, bottom = (a + b for a, b in zip(first, second))
    return (left, right, top, bottom)


def pad_pair(a: torch.Tensor, pad: Pad, layout: torch.memory_format | None = None) -> torch.Tensor:
    """Materialise pending explicit zero padding on an activation (the mask gets it via ``F.pad`` too).

    The eager form zeroes only the new border, not the whole padded buffer as ``F.pad`` does; its
    result has ``layout`` (by default the input's memory format). The portable form is ``F.pad``.
    """
    if use_portable_kernels() or min(pad) < 0:
        return F.pad(a, pad)
    left, right, top, bottom = pad
    n, channels, height, width = a.shape
    if layout is None:
        layout = torch.channels_last if a.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((n, channels, height + top + bottom, width + left + right), dtype=a.dtype, device=a.device,
                      memory_format=layout)
    out[:, :, top : top + height, left : left + width] = a
    out[:, :, :top].zero_()
    out[:, :, top + height :].zero_()
    out[:, :, top : top + height, :left].zero_()
    out[:, :, top : top + height, left + width :].zero_()
    return out
