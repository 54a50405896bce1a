"""The module ``layer_mask`` returns."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from layermask.allocator import keep_freed_memory_by_default
from layermask.transform.inputs import check_images_and_masks

__all__ = ["LayerMaskedModel"]


class LayerMaskedModel(nn.Module):
    """A layer-masked classifier: ``forward(images, masks)`` returns logits.

    ``images`` is N×C×H×W (preprocessed), ``masks`` N×1×H×W with 1 = visible. The generated
    ``torch.fx.GraphModule`` is available as :attr:`graph_module` (it skips input validation).

    The first forward pass in a process switches glibc's allocator to keep freed memory for reuse,
    as the first :func:`layermask.explain` does (:mod:`layermask.allocator`; opt out with
    ``LAYERMASK_KEEP_FREED_MEMORY=0``).
    """

    def __init__(self, graph_module: fx.GraphModule, in_channels: int | None) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.in_channels = in_channels
        self.eval()

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("a layer-masked model runs in eval mode only; call .eval() first")
        check_images_and_masks(images, masks, self.in_channels)
        keep_freed_memory_by_default()
        return self.graph_module(images, masks.to(images.dtype))
