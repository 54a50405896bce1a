"""Elementwise tensor functions of a layer-masked graph: its input, re-masking, and combined masks."""

from __future__ import annotations

import torch


def masked_input(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The network input ``x ⊙ m``; ``images`` may be one image broadcast over N masks.

    The result is channels-last: the depthwise neighbour fill runs several times faster on
    channels-last tensors on the CPU, and every later activation inherits the layout.
    """
    return (images * masks).contiguous(memory_format=torch.channels_last)


def apply_mask(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Restore the invariant ``a == 0 wherever m == 0`` after an operation that can break it."""
    return a * mask


def mask_product(*masks: torch.Tensor) -> torch.Tensor:
    """Mask of a sum or concatenation: visible only where every operand is visible."""
    out = masks[0]
    for mask in masks[1:]:
        out = out * mask
    return out
