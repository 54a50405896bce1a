"""What a spatial activation of the original graph becomes in the layer-masked graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from layermask.transform._pad_ops import Pad


@dataclass(frozen=True)
class Spatial:
    """A spatial activation in the new graph: the pair ``(a, m)`` of the spec.

    ``value`` is ``a`` (zero wherever ``m`` is), ``mask`` is ``m``. ``pre_pad`` is explicit zero
    padding still to apply to both (the converter's ``materialise`` applies it, a convolution takes it as its
    own), and ``non_negative`` records that ``a`` can have no negative value (a max-pool then needs no
    −∞ masking).
    """

    value: fx.Node
    mask: fx.Node
    pre_pad: Pad | None = None
    non_negative: bool = False
