"""Conversion-time behaviour of layer_mask: refusals, errors, and mask work done once per forward."""

from __future__ import annotations

import collections
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import layermask
from layermask.transform._conv_ops import masked_conv2d
from layermask.transform._elementwise_ops import mask_product
from layermask.transform._fill_ops import FillStep, mask_fill_step
from layermask.transform._window_ops import mask_adaptive_avg_pool, mask_avg_pool, mask_max_pool
from tests.helpers.networks import (
    ALL_ARCHITECTURES,
    ConvertedNetworks,
    SeededNetworks,
    UpsamplingNet,
    images_and_masks,
)


class Refine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=0.5)


class FunctionalInterpolateNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.refine = Refine()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.stem(x)).flatten(1)


class GlobalThenUpsampleNet(nn.Module):
    """Upsampling a non-spatial (globally pooled) tensor is fine: no mask reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.pool(self.stem(x))).flatten(1)


def test_unsupported_module_names_op_path_and_node() -> None:
    with pytest.raises(layermask.UnsupportedLayerError) as caught:
        layermask.layer_mask(UpsamplingNet().eval())
    error = caught.value
    assert error.op == "torch.nn.modules.upsampling.Upsample"
    assert error.module_path == "decoder.1"
    assert error.node == "decoder_1"
    assert "Upsample" in str(error) and "decoder.1" in str(error) and "decoder_1" in str(error)


def test_unsupported_function_names_enclosing_module() -> None:
    with pytest.raises(layermask.UnsupportedLayerError) as caught:
        layermask.layer_mask(FunctionalInterpolateNet().eval())
    assert caught.value.op == "torch.nn.functional.interpolate"
    assert caught.value.module_path == "refine"
    assert caught.value.node == "interpolate"


def test_unsupported_op_on_non_spatial_tensor_is_fine() -> None:
    model = GlobalThenUpsampleNet().eval()
    masked = layermask.layer_mask(model)
    images, masks = images_and_masks(2, size=32)
    with torch.inference_mode():
        assert masked(images, torch.ones_like(masks)).shape == model(images).shape


def test_training_mode_is_refused_at_conversion() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        layermask.layer_mask(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())


def test_dropout_left_in_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout2d(), nn.Flatten()).eval()
    model[1].train()
    with pytest.raises(layermask.UnsupportedLayerError, match="training mode") as caught:
        layermask.layer_mask(model)
    assert caught.value.op == "torch.nn.modules.dropout.Dropout2d" and caught.value.module_path == "1"


@pytest.mark.parametrize("activation", [nn.Hardtanh(0.5, 1.0), nn.Hardtanh(-2.0, -1.0)])
def test_hardtanh_that_moves_zero_is_refused(activation: nn.Module) -> None:
    """hardtanh(0) != 0 would make hidden positions visible; these bounds have no rule."""
    with pytest.raises(layermask.UnsupportedLayerError) as caught:
        layermask.layer_mask(nn.Sequential(nn.Conv2d(3, 4, 3), activation, nn.Flatten()).eval())
    assert caught.value.op == "torch.nn.modules.activation.Hardtanh"
    layermask.layer_mask(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh(-0.5, 0.5), nn.Flatten()).eval())


def test_converted_model_refuses_training_mode() -> None:
    masked = layermask.layer_mask(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval())
    masked.train()
    images, masks = images_and_masks(1, size=32)
    with pytest.raises(RuntimeError, match="eval mode"):
        masked(images, masks)


def _calls(graph: torch.fx.Graph, target: object) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and n.target is target]


def _fill_chain_start(coefficient: torch.fx.Node) -> torch.fx.Node:
    """The mask a chain of fill steps starts from (``coefficient`` is ``getitem(mask_fill_step(m, k), 0)``)."""
    mask = coefficient.args[0].args[0]
    while mask.target is operator.getitem and mask.args[0].target is mask_fill_step:
        mask = mask.args[0].args[0]
    return mask


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0", "densenet121", "mobilenet_v3_large"])
def test_mask_work_is_emitted_once_per_forward(name: str, converted: ConvertedNetworks) -> None:
    graph = converted(name).graph_module.graph
    mask_functions = [mask_fill_step, mask_max_pool, mask_product, mask_avg_pool, mask_adaptive_avg_pool]
    for fn in mask_functions:
        signatures = collections.Counter(repr(n.args) for n in _calls(graph, fn))
        assert all(count == 1 for count in signatures.values()), f"{fn.__name__} computed twice: {signatures}"
    # Each fill chain is as long as the longest fill that uses it, and no longer: convs at the
    # same resolution share one chain of grown masks and coefficients.
    longest: dict[torch.fx.Node, int] = collections.defaultdict(int)
    convs = [n for n in _calls(graph, masked_conv2d) if n.args[1]]
    for conv in convs:
        start = _fill_chain_start(conv.args[1][0])
        longest[start] = max(longest[start], len(conv.args[1]))
    assert len(_calls(graph, mask_fill_step)) == sum(longest.values())
    assert len(longest) < len(convs)


@pytest.mark.parametrize("name", ALL_ARCHITECTURES)
@torch.inference_mode()
def test_fill_pruning_changes_no_output(name: str, converted: ConvertedNetworks,
                                        seeded_network: SeededNetworks) -> None:
    images, masks = images_and_masks(3, seed=11)
    pruned = converted(name)(images, masks)
    full = layermask.layer_mask(seeded_network(name), prune_fill=False)(images, masks)
    assert (pruned - full).abs().max().item() <= 1e-5 * full.abs().max().item()


def _fills(model: layermask.LayerMaskedModel) -> list[int]:
    return [len(n.args[1]) for n in _calls(model.graph_module.graph, masked_conv2d) if n.args[1]]


def test_fill_pruning_applies_only_where_outputs_are_discarded(converted: ConvertedNetworks,
                                                               seeded_network: SeededNetworks) -> None:
    # ResNet-18: a BasicBlock's second 3×3 conv feeds the residual sum, its first feeds a conv.
    assert _fills(converted("resnet18"))[1:5] == [2, 1, 2, 1]
    # EfficientNet-B0's squeeze-excitation pools every position, so nothing may be dropped.
    unpruned = layermask.layer_mask(seeded_network("efficientnet_b0"), prune_fill=False)
    assert _fills(converted("efficientnet_b0")) == _fills(unpruned)


class ThreeBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 5, padding=2)
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a(x) + self.b(x) + self.c(x)).mean((2, 3))


def test_fill_steps_run_once_per_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    model = layermask.layer_mask(ThreeBranches().eval())
    calls = 0
    original = mask_fill_step

    def counting(mask: torch.Tensor) -> tuple[FillStep, torch.Tensor]:
        nonlocal calls
        calls += 1
        return original(mask)

    graph_globals = model.graph_module.forward.__globals__
    name = next(k for k, v in graph_globals.items() if v is original)
    monkeypatch.setitem(graph_globals, name, counting)
    images, masks = images_and_masks(1, size=32)
    with torch.inference_mode():
        model(images, masks)
    # Two 3×3 convs and a 5×5 conv on the same mask: 4 fill steps in all, not 2 + 4 + 2.
    assert calls == 4
