"""Checks on the (images, masks) pair every masker accepts."""

from __future__ import annotations

import torch

__all__ = ["check_images_and_masks"]


def check_images_and_masks(images: torch.Tensor, masks: torch.Tensor, channels: int | None = None) -> None:
    """Raise ``ValueError`` naming the problem if ``images``/``masks`` are not a valid masked batch.

    ``images`` must be a finite float tensor N×C×H×W (C == ``channels`` when given) and ``masks``
    an N×1×H×W tensor holding only 0 (hidden) and 1 (visible). A single image (1×C×H×W) may be
    paired with any number of masks: it is broadcast, never copied.
    """
    if not isinstance(images, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise ValueError("images and masks must both be torch tensors")
    if images.dim() != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor, got dtype {images.dtype}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"images must have {channels} channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    n, _, h, w = images.shape
    if n == 1 and masks.dim() == 4:
        n = masks.shape[0]
    if tuple(masks.shape) != (n, 1, h, w) or n == 0:
        raise ValueError(
            f"mask shape {tuple(masks.shape)} does not match the images: expected {(n, 1, h, w)} (N×1×H×W)"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or Inf values")
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("masks must be binary: every value 0 (hidden) or 1 (visible)")
