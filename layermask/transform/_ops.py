"""Tensor functions that a layer-masked graph calls.

Each function implements one rule of ``layer-masking-spec.md`` on plain tensors. Activations keep
the invariant ``a == 0 wherever m == 0``; every function here relies on it for its inputs and
restores it for its outputs. Functions whose name starts with ``mask_`` depend only on masks: the
converted graph calls each of them once per distinct mask and geometry, however many layers share
the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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


class FillStep(NamedTuple):
    """One neighbour-padding iteration of a mask, computed once and shared by every layer it serves.

    ``coefficient`` (N×1×H×W) is the dense form, ``(1 - m) / (den + eps)``. The iteration changes
    an activation only at the *band*: hidden positions with a visible neighbour (elsewhere the
    coefficient is 0, or no neighbour is visible and the neighbour sum is 0). ``band`` lists those
    positions as flat ``n·H·W + h·W + w`` indices (``position`` holds their ``n``, ``h``, ``w``,
    3×B), ``neighbours`` (B×9) their 3×3 neighbourhoods (clamped inside the map where ``inside``
    is 0) and ``band_coefficient`` (B×1) their coefficients. The band fields are ``None`` while
    exporting to ONNX, which uses the dense form.
    """

    coefficient: torch.Tensor
    band: torch.Tensor | None = None
    position: torch.Tensor | None = None
    neighbours: torch.Tensor | None = None
    inside: torch.Tensor | None = None
    band_coefficient: torch.Tensor | None = None

    def in_padded_map(self, height: int, width: int, pad: Pad) -> tuple[torch.Tensor, torch.Tensor]:
        """``(band, neighbours)`` as flat positions of the H×W map padded by ``pad``.

        Neighbours outside the original map (``inside`` 0) may point anywhere valid: they are
        read with weight 0.
        """
        assert self.position is not None
        left, right, top, bottom = pad
        padded_height, padded_width = height + top + bottom, width + left + right
        image, row, column = self.position
        band = (image * padded_height + row + top) * padded_width + column + left
        row_offsets, column_offsets = _offsets(band.device)
        offsets = row_offsets * padded_width + column_offsets
        last = self.coefficient.shape[0] * padded_height * padded_width - 1
        return band, (band.unsqueeze(1) + offsets).clamp_(0, last)


_ROW_OFFSETS = torch.tensor([-1, -1, -1, 0, 0, 0, 1, 1, 1])
_COLUMN_OFFSETS = torch.tensor([-1, 0, 1, -1, 0, 1, -1, 0, 1])


def _offsets(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets of a 3×3 neighbourhood, on ``device``."""
    return _ROW_OFFSETS.to(device), _COLUMN_OFFSETS.to(device)


def _band(mask: torch.Tensor, den: torch.Tensor, coefficient: torch.Tensor) -> FillStep:
    _, _, height, width = mask.shape
    band = torch.nonzero(((mask < 1) & (den > 0)).flatten()).flatten()
    line, column = band // width, band % width
    image, row = line // height, line % height
    row_offsets, column_offsets = _offsets(band.device)
    rows, columns = row.unsqueeze(1) + row_offsets, column.unsqueeze(1) + column_offsets
    inside = (rows >= 0) & (rows < height) & (columns >= 0) & (columns < width)
    neighbours = torch.where(inside, band.unsqueeze(1) + row_offsets * width + column_offsets, band.unsqueeze(1))
    return FillStep(coefficient, band, torch.stack((image, row, column)), neighbours, inside.to(mask.dtype),
                    coefficient.flatten()[band].unsqueeze(1))


def mask_neighbour_sum(mask: torch.Tensor) -> torch.Tensor:
    """:func:`neighbour_sum` of a one-channel mask, as shifted additions (far faster than a
    one-channel convolution on the CPU; exact for 0/1 masks).

    The ONNX export keeps the convolution, whose output shape the exporter can infer.
    """
    if torch.onnx.is_in_onnx_export():
        return neighbour_sum(mask, torch.ones(1, 1, 3, 3, dtype=mask.dtype, device=mask.device))
    padded = F.pad(mask, (1, 1, 1, 1))
    rows = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
    return rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]


def mask_fill_step(mask: torch.Tensor) -> tuple[FillStep, torch.Tensor]:
    """One neighbour-padding iteration of a mask: ``(step, grown mask)``.

    The coefficient is ``(1 - m) / (den + eps)`` so that the activation update of the spec,
    ``a + (1 - m) ⊙ num / (den + eps)``, becomes ``a + num ⊙ coefficient``.
    """
    den = mask_neighbour_sum(mask)
    coefficient = (1.0 - mask) / (den + FILL_EPS)
    step = FillStep(coefficient) if torch.onnx.is_in_onnx_export() else _band(mask, den, coefficient)
    return step, (mask + den).clamp_(0.0, 1.0)


def neighbour_fill(a: torch.Tensor, steps: Sequence[FillStep], ones_kernel: torch.Tensor,
                   pad: Pad | None = None, in_place: bool = False) -> torch.Tensor:
    """``fill(a, m, t)`` of the spec, given the ``t`` steps of :func:`mask_fill_step`, then zero ``pad``.

    Only the band of each step is computed (a gathered 3×3 sum per band position on a
    channels-last copy, written into the padded buffer when there is ``pad``), which is exact:
    everywhere else the update is 0. The dense form (a depthwise neighbour sum over the whole map)
    is kept for the ONNX export and for masks whose batch differs from the activation's.
    ``in_place`` lets the band fill overwrite ``a`` (when nothing else reads it).
    """
    n, channels, height, width = a.shape
    if not steps or torch.onnx.is_in_onnx_export() or steps[0].band is None or steps[0].coefficient.shape[0] != n:
        for step in steps:
            total = neighbour_sum(a, ones_kernel)
            if torch.onnx.is_in_onnx_export():  # the exporter has no out= form
                a = torch.addcmul(a, total, step.coefficient)
            else:  # writing into the fresh neighbour-sum buffer saves a large allocation per iteration
                a = torch.addcmul(a, total, step.coefficient, out=total)
        return a if pad is None else pad_pair(a, pad)
    if pad is not None:
        out = pad_pair(a, pad, torch.channels_last)
    elif in_place and a.is_contiguous(memory_format=torch.channels_last):
        out = a
    else:
        out = a.clone(memory_format=torch.channels_last)
    rows = out.permute(0, 2, 3, 1).view(-1, channels)
    for step in steps:
        assert step.band is not None and step.neighbours is not None and step.band_coefficient is not None
        if step.band.numel():
            band, neighbours = step.band, step.neighbours
            if pad is not None:
                band, neighbours = step.in_padded_map(height, width, pad)
            sums = F.embedding_bag(neighbours, rows, mode="sum", per_sample_weights=step.inside)
            rows.index_add_(0, band, sums.mul_(step.band_coefficient))
    return out


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
    activation: tuple[str, tuple[float, ...]] | None = None,
) -> torch.Tensor:
    """Conv2d rule: neighbour-fill, optional explicit zero padding, the layer's conv, re-mask.

    ``fill_in_place`` lets the fill overwrite ``a`` (set by :mod:`layermask.transform._in_place` when no
    other node reads ``a``). ``activation`` (``("relu", ())`` or ``("hardtanh", (lo, hi))``, set by
    :mod:`layermask.transform._conv_fusion`) is applied to the output, as a oneDNN post-op where possible.
    """
    if ones_kernel is not None:
        a = neighbour_fill(a, coefficients, ones_kernel, pre_pad, fill_in_place)
    elif pre_pad is not None:
        a = pad_pair(a, pre_pad)
    if activation is None:
        return F.conv2d(a, weight, bias, stride, padding, dilation, groups).mul_(out_mask)
    name, scalars = activation
    if _fused_conv_available(a, weight) and not isinstance(padding, str):
        y = torch.ops.mkldnn._convolution_pointwise(a, weight, bias, list(padding), list(stride), list(dilation),
                                                    groups, name, list(scalars), "")
        return y.mul_(out_mask)
    y = F.conv2d(a, weight, bias, stride, padding, dilation, groups).mul_(out_mask)
    if name == "relu":
        return F.relu(y, inplace=True)
    low, high = scalars
    return F.hardtanh(y, low, high, inplace=True)


_ONEDNN_FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _fused_conv_available(a: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's convolution with a post-op can run here (float32 CPU, outside the ONNX export)."""
    return (_ONEDNN_FUSED_CONV and a.device.type == "cpu" and a.dtype == weight.dtype == torch.float32
            and not torch.onnx.is_in_onnx_export())


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


def pad_pair(a: torch.Tensor, pad: Pad, layout: torch.memory_format | None = None) -> torch.Tensor:
    """Materialise pending explicit zero padding on an activation (the mask gets it via ``F.pad`` too).

    Outside the ONNX export, only the new border is zeroed, not the whole padded buffer as
    ``F.pad`` does; the result has ``layout`` (by default the input's memory format).
    """
    left, right, top, bottom = pad
    if torch.onnx.is_in_onnx_export() or min(pad) < 0:
        return F.pad(a, pad)
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
