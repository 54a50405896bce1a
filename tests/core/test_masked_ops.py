"""The per-operation rules of the spec, checked on small tensors against literal formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import layermask
from layermask.transform import _fill_ops
from tests.helpers.networks import ConvertedNetworks, images_and_masks
from tests.helpers.reference_resnet import fill as literal_fill


def random_pair(channels: int = 3, size: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(2, 1, size, size, generator=generator) > 0.6).float()
    return torch.randn(2, channels, size, size, generator=generator) * mask, mask


def test_fill_matches_the_spec_formula() -> None:
    a, m = random_pair()
    for iterations in (1, 2, 4):
        coefficients, grown = [], m
        for _ in range(iterations):
            coefficient, grown = _fill_ops.mask_fill_step(grown)
            coefficients.append(coefficient)
        expected = literal_fill(a, m, iterations)
        assert torch.allclose(_fill_ops.neighbour_fill(a, coefficients, torch.ones(3, 1, 3, 3)), expected, atol=1e-5)


def test_fill_sets_frontier_to_mean_of_known_neighbours_and_keeps_known_pixels() -> None:
    a = torch.zeros(1, 1, 3, 3)
    m = torch.zeros(1, 1, 3, 3)
    a[0, 0, 0, 0], m[0, 0, 0, 0] = 2.0, 1.0
    a[0, 0, 0, 2], m[0, 0, 0, 2] = 4.0, 1.0
    coefficient, _ = _fill_ops.mask_fill_step(m)
    out = _fill_ops.neighbour_fill(a, [coefficient], torch.ones(1, 1, 3, 3))
    assert out[0, 0, 0, 0] == 2.0 and out[0, 0, 0, 2] == 4.0  # known pixels never change
    assert torch.isclose(out[0, 0, 0, 1], torch.tensor(3.0), atol=1e-4)  # touches both: their mean
    assert torch.isclose(out[0, 0, 1, 0], torch.tensor(2.0), atol=1e-4)  # touches only the 2
    assert out[0, 0, 2, 1] == 0.0  # touches no known pixel yet


def test_conv_output_mask_is_maxpool_of_input_mask_and_hidden_outputs_are_zero() -> None:
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1).eval()
    model = layermask.layer_mask(nn.Sequential(conv).eval())
    images, m = random_pair(size=10, seed=3)
    out = model(images, m)
    out_mask = F.max_pool2d(m, 3, 2, 1)
    assert (out[(out_mask == 0).expand_as(out)] == 0).all()
    assert (out[(out_mask == 1).expand_as(out)] != 0).any()


def test_max_pool_hidden_positions_never_win() -> None:
    # Negative visible values next to hidden zeros: the max must be the visible value, not 0.
    model = layermask.layer_mask(nn.Sequential(nn.MaxPool2d(2)).eval())
    images = -torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1.0
    out = model(images, mask)
    assert out[0, :, 0, 0].eq(-1.0).all()  # window with one visible pixel
    assert out[0, :, 1, 1].eq(0.0).all()  # window with nothing visible


def test_avg_pool_is_the_mean_of_visible_positions() -> None:
    model = layermask.layer_mask(nn.Sequential(nn.AvgPool2d(2)).eval())
    images = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 3, 1, 1)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 0, 0] = 0.0
    mask[..., 2:, 2:] = 0.0
    out = model(images, mask)
    assert torch.isclose(out[0, 0, 0, 0], torch.tensor((1.0 + 4.0 + 5.0) / 3))
    assert out[0, 0, 1, 1] == 0.0


def test_explicit_zero_padding_behaves_like_the_convs_own_padding() -> None:
    torch.manual_seed(0)
    own = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten()).eval()
    explicit = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    explicit[1].load_state_dict(own[0].state_dict())
    asymmetric = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, stride=2), nn.Flatten()).eval()
    images, m = random_pair(size=8, seed=5)
    assert torch.allclose(layermask.layer_mask(own)(images, m), layermask.layer_mask(explicit)(images, m), atol=1e-6)
    # Padding is never visible, and the fill never writes into it.
    out = layermask.layer_mask(asymmetric)(images, torch.ones_like(m))
    assert torch.allclose(out, asymmetric(images), atol=1e-5)


class PadThen(nn.Module):
    """Explicit padding, then a zero-preserving activation or a layout change, then a conv."""

    def __init__(self, between: str) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 2, 0, 1))
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(3, 4, 3)
        self.between = between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        if self.between == "module":
            x = self.act(x)
        elif self.between == "function":
            x = F.silu(x)
        else:
            x = x.contiguous()
        return self.conv(x).flatten(1)


@pytest.mark.parametrize("between", ["module", "function", "method"])
@torch.inference_mode()
def test_padding_before_a_pointwise_op_is_applied_once(between: str) -> None:
    """Padding, then an op with f(0) == 0, is the same as the op, then padding: the conv sees it once."""
    torch.manual_seed(0)
    padded_first = PadThen(between).eval()
    activation = {"module": nn.ReLU(), "function": nn.SiLU(), "method": nn.Identity()}[between]
    padded_last = nn.Sequential(activation, padded_first.pad, padded_first.conv, nn.Flatten()).eval()
    images, m = random_pair(size=8, seed=6)
    expected = layermask.layer_mask(padded_last)(images, m)
    assert torch.allclose(layermask.layer_mask(padded_first)(images, m), expected, atol=1e-6)
    full = torch.ones_like(m)
    assert torch.allclose(layermask.layer_mask(padded_first)(images, full), padded_first(images), atol=1e-5)


@pytest.mark.parametrize("pad", [None, (0, 1, 0, 1), (2, 0, 1, 3)])
def test_band_fill_equals_the_dense_fill(pad: tuple[int, int, int, int] | None) -> None:
    """The band-only fill (the default) against the dense depthwise form, with explicit padding fused in."""
    a, m = random_pair(channels=5, size=17)
    steps, grown = [], m
    for _ in range(3):
        step, grown = _fill_ops.mask_fill_step(grown)
        steps.append(step)
    assert steps[0].band is not None and 0 < steps[0].band.numel() < m.numel()
    kernel = torch.ones(5, 1, 3, 3)
    dense = _fill_ops.neighbour_fill(a, [_fill_ops.FillStep(s.coefficient) for s in steps], kernel)
    expected = dense if pad is None else F.pad(dense, pad)
    band = _fill_ops.neighbour_fill(a, steps, kernel, pad)
    assert band.shape == expected.shape and band.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(band, expected, atol=1e-6)


def test_mask_neighbour_sum_by_shifts_equals_the_convolution() -> None:
    """The eager mask neighbour sum against the portable one (a convolution), exactly, on 0/1 masks."""
    _, m = random_pair(size=13, seed=4)
    by_conv = _fill_ops.neighbour_sum(m, torch.ones(1, 1, 3, 3))
    assert torch.equal(_fill_ops._mask_neighbour_sum_by_shifts(m), by_conv)


def test_band_fill_runs_under_reduced_precision_autocast(converted: ConvertedNetworks) -> None:
    """Under autocast activations are bfloat16 (float16 on CUDA) while the masks stay float32."""
    images, masks = images_and_masks(2, seed=9)
    model = converted("efficientnet_lite0")
    with torch.inference_mode():
        reference = model(images, masks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, masks)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max().item() <= 0.05 * reference.abs().max().item()
    assert torch.equal(low.float().argmax(dim=1), reference.argmax(dim=1))
