"""The pooling rules of ``layer-masking-spec.md``, and the output mask of any window operation.

Functions whose name starts with ``mask_`` depend only on masks: the converted graph calls each of
them once per distinct mask and geometry, however many layers share the result. Activations keep
the invariant ``a == 0 wherever m == 0``; every function here relies on it for its inputs and
restores it for its outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from layermask.transform._pad_ops import Pad


def mask_max_pool(
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool = False,
    pre_pad: Pad | None = None,
) -> torch.Tensor:
    """Output mask of a window operation (conv or max-pool): visible where any input of the window is visible.

    Padding, explicit (``pre_pad``) or the layer's own, never counts as visible.
    """
    if pre_pad is not None:
        mask = F.pad(mask, pre_pad)
    if tuple(kernel_size) == (1, 1) and tuple(padding) == (0, 0):
        return mask[:, :, :: stride[0], :: stride[1]]
    if any(p > k // 2 for p, k in zip(padding, kernel_size)):
        mask = F.pad(mask, (padding[1], padding[1], padding[0], padding[0]))
        padding = (0, 0)
    return F.max_pool2d(mask, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)


def masked_max_pool2d(
    a: torch.Tensor,
    mask: torch.Tensor,
    out_mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool,
    non_negative: bool,
) -> torch.Tensor:
    """MaxPool2d rule: hidden positions never win; windows with nothing visible give 0.

    When ``a`` is known to be non-negative (it comes from a ReLU), the hidden zeros can never beat
    a visible value and an all-hidden window is already 0, so the plain pool is exact.
    """
    if non_negative:
        return F.max_pool2d(a, kernel_size, stride, padding, dilation, ceil_mode)
    a = a.masked_fill(mask == 0, float("-inf"))
    y = F.max_pool2d(a, kernel_size, stride, padding, dilation, ceil_mode)
    return torch.where(out_mask > 0, y, torch.zeros((), dtype=y.dtype, device=y.device))


def mask_avg_pool(
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    ceil_mode: bool,
    count_include_pad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visible fraction per window, output mask)`` of an AvgPool2d.

    With ``count_include_pad`` the layer's own padding counts as visible in the denominator, so that
    a fully visible image reproduces the original layer exactly.
    """
    if count_include_pad and any(padding):
        hidden = F.avg_pool2d(1.0 - mask, kernel_size, stride, padding, ceil_mode, True)
        den = 1.0 - hidden
        visible = F.avg_pool2d(mask, kernel_size, stride, padding, ceil_mode, True) > 0
    else:
        den = F.avg_pool2d(mask, kernel_size, stride, padding, ceil_mode, count_include_pad)
        visible = den > 0
    return den, visible.to(mask.dtype)


def mask_adaptive_avg_pool(mask: torch.Tensor, output_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visible fraction per window, output mask)`` of an AdaptiveAvgPool2d."""
    den = F.adaptive_avg_pool2d(mask, output_size)
    return den, (den > 0).to(mask.dtype)


def divide_by_visible(pooled: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """AvgPool2d / AdaptiveAvgPool2d rule, from a plain pool of a masked activation: ``pool(a ⊙ m) / pool(m)``,
    0 where nothing is visible."""
    return pooled / den.clamp_min(torch.finfo(den.dtype).tiny)


def global_masked_mean(a: torch.Tensor, mask: torch.Tensor, dims: Sequence[int], keepdim: bool) -> torch.Tensor:
    """Global average pool rule: the mean over the visible positions of ``dims``; 0 where none is visible."""
    den = mask.sum(dim=tuple(dims), keepdim=keepdim)
    return a.sum(dim=tuple(dims), keepdim=keepdim) / den.clamp_min(1.0)
