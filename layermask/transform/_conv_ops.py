"""The Conv2d rule of ``layer-masking-spec.md`` as the converted graph runs it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from layermask.transform import _onednn as onednn
from layermask.transform._fill_ops import FillStep, neighbour_fill
from layermask.transform._pad_ops import Pad, pad_pair


def masked_conv2d(
    a: torch.Tensor,
    coefficients: Sequence[FillStep],
    ones_kernel: torch.Tensor | None,
    out_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
    groups: int,
    pre_pad: Pad | None = None,
    fill_in_place: bool = False,
    activation: onednn.Activation | None = None,
) -> torch.Tensor:
    """Conv2d rule: neighbour-fill, optional explicit zero padding, the layer's conv, re-mask.

    ``fill_in_place`` lets the fill overwrite ``a`` (set by :mod:`layermask.transform._in_place` when no
    other node reads ``a``). ``activation`` (set by :mod:`layermask.transform._conv_fusion`) is applied
    to the output: as a oneDNN post-op where :mod:`layermask.transform._onednn` can, else as a separate op.
    """
    if ones_kernel is not None:
        a = neighbour_fill(a, coefficients, ones_kernel, pre_pad, fill_in_place)
    elif pre_pad is not None:
        a = pad_pair(a, pre_pad)
    if activation is None:
        return F.conv2d(a, weight, bias, stride, padding, dilation, groups).mul_(out_mask)
    fused = onednn.fused_conv2d(a, weight, bias, stride, padding, dilation, groups, activation)
    if fused is not None:
        return fused.mul_(out_mask)
    y = F.conv2d(a, weight, bias, stride, padding, dilation, groups).mul_(out_mask)
    name, scalars = activation
    if name == "relu":
        return F.relu(y, inplace=True)
    low, high = scalars
    return F.hardtanh(y, low, high, inplace=True)
