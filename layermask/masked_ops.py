"""Tensor functions that a layer-masked graph calls.

Each function implements one rule of ``layer-masking-spec.md`` on plain tensors. Activations keep
the invariant ``a == 0 wherever m == 0``; every function here relies on it for its inputs and
restores it for its outputs. Functions whose name starts with ``mask_`` depend only on masks: the
converted graph calls each of them once per distinct mask and geometry, however many layers share
the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

FILL_EPS = 1e-5
Pad = tuple[int, int, int, int]


def masked_input(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The network input ``x ⊙ m``; ``images`` may be one image broadcast over N masks.

    The result is channels-last: the depthwise neighbour fill runs several times faster on
    channels-last tensors on the CPU, and every later activation inherits the layout.
    """
    return (images * masks).contiguous(memory_format=torch.channels_last)


def neighbour_sum(a: torch.Tensor, ones_kernel: torch.Tensor) -> torch.Tensor:
    """Sum over each pixel's 3×3 neighbourhood, with zero 'same' padding, channel by channel.

    ``ones_kernel`` is a C×1×3×3 tensor of ones: a depthwise convolution, which on channels-last
    tensors is several times faster on the CPU than the equivalent sum pooling.
    """
    return F.conv2d(a, ones_kernel, padding=1, groups=ones_kernel.shape[0])


def mask_fill_step(mask: torch.Tensor, ones_kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One neighbour-padding iteration of a mask: ``(coefficient, grown mask)``.

    The coefficient is ``(1 - m) / (den + eps)`` so that the activation update of the spec,
    ``a + (1 - m) ⊙ num / (den + eps)``, becomes ``a + num ⊙ coefficient``.
    """
    den = neighbour_sum(mask, ones_kernel)
    coefficient = (1.0 - mask) / (den + FILL_EPS)
    return coefficient, (mask + den).clamp_(0.0, 1.0)


def neighbour_fill(a: torch.Tensor, coefficients: Sequence[torch.Tensor], ones_kernel: torch.Tensor) -> torch.Tensor:
    """``fill(a, m, t)`` of the spec, given the ``t`` coefficients of :func:`mask_fill_step`."""
    for coefficient in coefficients:
        total = neighbour_sum(a, ones_kernel)
        if torch.onnx.is_in_onnx_export():  # the exporter has no out= form
            a = torch.addcmul(a, total, coefficient)
        else:  # writing into the fresh neighbour-sum buffer saves a large allocation per iteration
            a = torch.addcmul(a, total, coefficient, out=total)
    return a


def mask_max_pool(
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool = False,
    pre_pad: Pad | None = None,
) -> torch.Tensor:
    """Output mask of a window operation: visible where any input of the window is visible.

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


def mask_product(*masks: torch.Tensor) -> torch.Tensor:
    """Mask of a sum or concatenation: visible only where every operand is visible."""
    out = masks[0]
    for mask in masks[1:]:
        out = out * mask
    return out


def mask_avg_pool(
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    ceil_mode: bool,
    count_include_pad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visible fraction per window, output mask)`` of an average pool.

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
    """``(visible fraction per window, output mask)`` of an adaptive average pool."""
    den = F.adaptive_avg_pool2d(mask, output_size)
    return den, (den > 0).to(mask.dtype)


def divide_by_visible(pooled: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Masked mean from a plain pool of a masked activation: ``pool(a ⊙ m) / pool(m)``, 0 where nothing is visible."""
    return pooled / den.clamp_min(torch.finfo(den.dtype).tiny)


def masked_conv2d(
    a: torch.Tensor,
    coefficients: Sequence[torch.Tensor],
    ones_kernel: torch.Tensor | None,
    out_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
    groups: int,
    pre_pad: Pad | None = None,
) -> torch.Tensor:
    """Conv2d rule: neighbour-fill, optional explicit zero padding, the layer's conv, re-mask."""
    if ones_kernel is not None:
        a = neighbour_fill(a, coefficients, ones_kernel)
    if pre_pad is not None:
        a = F.pad(a, pre_pad)
    y = F.conv2d(a, weight, bias, stride, padding, dilation, groups)
    return y.mul_(out_mask)


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


def global_masked_mean(a: torch.Tensor, mask: torch.Tensor, dims: Sequence[int], keepdim: bool) -> torch.Tensor:
    """Mean over the visible positions of ``dims``; 0 where none is visible."""
    den = mask.sum(dim=tuple(dims), keepdim=keepdim)
    return a.sum(dim=tuple(dims), keepdim=keepdim) / den.clamp_min(1.0)


def apply_mask(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Restore the invariant after an operation that can make hidden positions non-zero."""
    return a * mask


def add_pads(first: Pad, second: Pad) -> Pad:
    """Two explicit zero paddings applied one after the other, as one."""
    left, right, top, bottom = (a + b for a, b in zip(first, second))
    return (left, right, top, bottom)


def pad_pair(a: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Materialise pending explicit zero padding on an activation (the mask gets it via ``F.pad`` too)."""
    return F.pad(a, pad)
