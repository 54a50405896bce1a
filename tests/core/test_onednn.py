"""oneDNN's fused convolution + activation against the separate ops it replaces."""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from layermask.transform import _onednn as onednn
from layermask.transform._conv_ops import masked_conv2d
from tests.helpers.networks import ConvertedNetworks, images_and_masks


def test_probe_finds_the_fused_op_where_onednn_has_it() -> None:
    """On an x86 CPU build with oneDNN and the op, the probe must succeed (else it silently costs speed)."""
    has_op = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    if platform.machine().lower() not in ("x86_64", "amd64") or not has_op:
        pytest.skip("no oneDNN fused convolution in this build")
    assert onednn.fused_conv_available()


def test_nothing_runs_onednn_at_import() -> None:
    """A oneDNN call on the importing thread made the service's compute threads page-fault every pass."""
    probe = ("import layermask, layermask_service.server\n"
             "from layermask.transform import _onednn\n"
             "layermask.layer_mask(layermask.load_model().network)\n"
             "print(_onednn.fused_conv_available.cache_info().currsize)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "0"


def test_fused_op_is_refused_where_it_cannot_run() -> None:
    a, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert onednn.available_for(a, weight, (1, 1)) == onednn.fused_conv_available()
    assert not onednn.available_for(a.double(), weight.double(), (1, 1))
    assert not onednn.available_for(a, weight, "same")
    with onednn.separate_conv_ops():
        assert not onednn.available_for(a, weight, (1, 1))
        assert onednn.fused_conv2d(a, weight, None, (1, 1), (1, 1), (1, 1), 1, ("relu", ())) is None
    assert onednn.available_for(a, weight, (1, 1)) == onednn.fused_conv_available()


@pytest.mark.parametrize("activation", [("relu", ()), ("hardtanh", (0.0, 6.0)), ("hardtanh", (-0.5, 0.25))])
@torch.inference_mode()
def test_masked_conv_with_activation_is_the_same_fused_or_not(activation: onednn.Activation) -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, 9, 9, generator=generator).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 2, 3, 3, generator=generator), torch.randn(6, generator=generator)
    out_mask = (torch.rand(2, 1, 5, 5, generator=generator) > 0.3).float()
    args: tuple[Any, ...] = (a, (), None, out_mask, weight, bias, (2, 2), (1, 1), (1, 1), 2)
    fused = masked_conv2d(*args, activation=activation)
    with onednn.separate_conv_ops():
        separate = masked_conv2d(*args, activation=activation)
    name, scalars = activation
    conv = F.conv2d(a, weight, bias, 2, 1, 1, 2)
    expected = (F.relu(conv) if name == "relu" else F.hardtanh(conv, *scalars)) * out_mask
    assert torch.allclose(separate, expected, atol=1e-6)
    assert torch.allclose(fused, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
@torch.inference_mode()
def test_layer_masked_network_is_the_same_fused_or_not(name: str, converted: ConvertedNetworks,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """EfficientNet-Lite0 fuses ReLU6 (hardtanh), ResNet-18 ReLU: both post-ops, on a whole network."""
    fused_calls = 0
    fused_conv2d = onednn.fused_conv2d

    def counting(*args: Any) -> torch.Tensor | None:
        nonlocal fused_calls
        out = fused_conv2d(*args)
        fused_calls += out is not None
        return out

    monkeypatch.setattr(onednn, "fused_conv2d", counting)
    model = converted(name)
    images, masks = images_and_masks(3, seed=31)
    masks[0] = 1.0
    fused = model(images, masks)
    calls = fused_calls
    with onednn.separate_conv_ops():
        separate = model(images, masks)
    assert fused_calls == calls  # nothing was fused inside the block
    if onednn.fused_conv_available():
        assert calls > 0
    assert (fused - separate).abs().max().item() <= 1e-5 * separate.abs().max().item()
    assert torch.equal(fused.argmax(dim=1), separate.argmax(dim=1))
