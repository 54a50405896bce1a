"""Building binary masks (N×1×H×W, 1 = visible)."""

from __future__ import annotations

import torch

__all__ = ["random_patch_masks"]


def random_patch_masks(
    batch: int, size: tuple[int, int], patch: int = 16, hidden_fraction: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """Masks that each hide a random ``hidden_fraction`` of the ``patch``×``patch`` cells of an image.

    Cells are chosen without replacement with a seeded generator, so the same arguments always give
    the same masks. ``size`` must be a multiple of ``patch``.
    """
    height, width = size
    if height % patch or width % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    if not 0.0 <= hidden_fraction <= 1.0:
        raise ValueError(f"hidden_fraction must be in [0, 1], got {hidden_fraction}")
    rows, cols = height // patch, width // patch
    generator = torch.Generator().manual_seed(seed)
    keep = torch.ones(batch, rows * cols)
    hidden = round(hidden_fraction * rows * cols)
    for sample in keep:
        sample[torch.randperm(rows * cols, generator=generator)[:hidden]] = 0.0
    cells = keep.view(batch, 1, rows, cols)
    return cells.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
