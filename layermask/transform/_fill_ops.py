"""Neighbour padding, ``fill(a, m, t)`` of ``layer-masking-spec.md``, as the converted graph runs it.

The mask side (:func:`mask_fill_step`) depends only on the mask: the converted graph computes each
step once per distinct mask and shares it between every convolution that fills from that mask. The
activation side (:func:`neighbour_fill`) applies the steps to one activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from layermask.transform._kernel_choice import use_portable_kernels
from layermask.transform._pad_ops import Pad, pad_pair

FILL_EPS = 1e-5


class FillStep(NamedTuple):
    """One neighbour-padding iteration of a mask, computed once and shared by every layer it serves.

    ``coefficient`` (N×1×H×W) is the dense form, ``(1 - m) / (den + eps)``. The iteration changes
    an activation only at the *band*: hidden positions with a visible neighbour (elsewhere the
    coefficient is 0, or no neighbour is visible and the neighbour sum is 0). ``band`` lists those
    positions as flat ``n·H·W + h·W + w`` indices (``position`` holds their ``n``, ``h``, ``w``,
    3×B), ``neighbours`` (B×9) their 3×3 neighbourhoods (clamped inside the map where ``inside``
    is 0) and ``band_coefficient`` (B×1) their coefficients. The band fields are ``None`` in the
    portable form (:mod:`layermask.transform._kernel_choice`), which fills densely.
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


def _band_step(mask: torch.Tensor, den: torch.Tensor, coefficient: torch.Tensor) -> FillStep:
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


def neighbour_sum(a: torch.Tensor, ones_kernel: torch.Tensor) -> torch.Tensor:
    """Sum over each pixel's 3×3 neighbourhood, with zero 'same' padding, channel by channel.

    ``ones_kernel`` is a C×1×3×3 tensor of ones: a depthwise convolution, which on channels-last
    tensors is several times faster on the CPU than the equivalent sum pooling.
    """
    return F.conv2d(a, ones_kernel, padding=1, groups=ones_kernel.shape[0])


def _mask_neighbour_sum_by_shifts(mask: torch.Tensor) -> torch.Tensor:
    """:func:`neighbour_sum` of a one-channel mask as shifted additions: far faster than a one-channel
    convolution on the CPU, and exact for 0/1 masks."""
    padded = F.pad(mask, (1, 1, 1, 1))
    rows = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
    return rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]


def mask_fill_step(mask: torch.Tensor) -> tuple[FillStep, torch.Tensor]:
    """One neighbour-padding iteration of a mask: ``(step, grown mask)``.

    The coefficient is ``(1 - m) / (den + eps)`` so that the activation update of the spec,
    ``a + (1 - m) ⊙ num / (den + eps)``, becomes ``a + num ⊙ coefficient``. The eager form also
    lists the band; the portable form sums the neighbours with a convolution, whose output shape
    the ONNX exporter can infer.
    """
    portable = use_portable_kernels()
    if portable:
        den = neighbour_sum(mask, torch.ones(1, 1, 3, 3, dtype=mask.dtype, device=mask.device))
    else:
        den = _mask_neighbour_sum_by_shifts(mask)
    coefficient = (1.0 - mask) / (den + FILL_EPS)
    step = FillStep(coefficient) if portable else _band_step(mask, den, coefficient)
    return step, (mask + den).clamp_(0.0, 1.0)


def neighbour_fill(a: torch.Tensor, steps: Sequence[FillStep], ones_kernel: torch.Tensor,
                   pad: Pad | None = None, in_place: bool = False) -> torch.Tensor:
    """``fill(a, m, t)`` of the spec, given the ``t`` steps of :func:`mask_fill_step`, then zero ``pad``.

    The eager form computes only the band of each step, which is exact: everywhere else the update
    is 0. The dense form (a depthwise neighbour sum over the whole map) serves the portable form
    and steps without a band or whose batch differs from the activation's. ``in_place`` lets the
    band fill overwrite ``a`` (when nothing else reads it).
    """
    portable = use_portable_kernels()
    if not portable and steps and steps[0].band is not None and steps[0].coefficient.shape[0] == a.shape[0]:
        return _band_fill(a, steps, pad, in_place)
    for step in steps:
        total = neighbour_sum(a, ones_kernel)
        if portable:  # the exporter has no out= form
            a = torch.addcmul(a, total, step.coefficient)
        else:  # writing into the fresh neighbour-sum buffer saves a large allocation per iteration
            a = torch.addcmul(a, total, step.coefficient, out=total)
    return a if pad is None else pad_pair(a, pad)


def _band_fill(a: torch.Tensor, steps: Sequence[FillStep], pad: Pad | None, in_place: bool) -> torch.Tensor:
    """The band-only fill: a gathered 3×3 sum per band position on a channels-last copy of ``a``,
    written into the padded buffer when there is ``pad``."""
    _, channels, height, width = a.shape
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
            # Under autocast the activation may be half precision while the masks stay float32.
            weights = step.inside.to(rows.dtype)  # type: ignore[union-attr]
            sums = F.embedding_bag(neighbours, rows, mode="sum", per_sample_weights=weights)
            rows.index_add_(0, band, sums.mul_(step.band_coefficient.to(rows.dtype)))
    return out
