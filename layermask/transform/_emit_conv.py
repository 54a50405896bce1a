"""Emitters for the Conv2d and BatchNorm2d rules of ``layer-masking-spec.md``.

Conv2d (module or ``F.conv2d``): fill ``d·(k−1)`` neighbour-padding iterations, run the layer's own
convolution, and re-mask with the window max-pool of the *input* mask; explicit zero padding
pending on the input becomes the convolution's own padding. An eval-mode BatchNorm2d that is a
convolution's only consumer is folded into a copy of its weights; any other is ``bn(a ⊙ m) ⊙ m``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from layermask.transform import _rules as rules
from layermask.transform._conv_ops import masked_conv2d
from layermask.transform._pad_ops import Pad, add_pads
from layermask.transform._spatial import Spatial

if TYPE_CHECKING:
    from layermask.transform._converter import Converter

_CONV_PARAMETERS = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]


@dataclass(frozen=True)
class _Conv:
    """A convolution of the original graph: its weight and bias (tensors, and their nodes in the new
    graph) and its hyper-parameters as written (ints, pairs or a padding string)."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    weight_node: Any
    bias_node: Any
    stride: Any
    padding: Any
    dilation: Any
    groups: int


def conv_module(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Conv2d rule for an ``nn.Conv2d`` (zero ``padding_mode`` only)."""
    module = converter.module_of(node)
    assert isinstance(module, nn.Conv2d)
    if module.padding_mode != "zeros":
        raise converter.unsupported(node, f"padding_mode={module.padding_mode!r}; only zero padding is supported")
    weight_node = converter.graph.get_attr(f"{node.target}.weight")
    bias_node = converter.graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
    conv = _Conv(module.weight, module.bias, weight_node, bias_node, module.stride, module.padding, module.dilation,
                 module.groups)
    return _emit(converter, node, args[0], conv)


def conv_function(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Conv2d rule for ``F.conv2d`` whose weight (and bias) are parameters or buffers of the model."""
    p = rules.bind(_CONV_PARAMETERS, args, kwargs)
    original = rules.bind(_CONV_PARAMETERS, tuple(node.args), dict(node.kwargs))
    x = p["input"]
    if not isinstance(x, Spatial) or isinstance(p["weight"], Spatial):
        raise converter.unsupported(node, "only the input of a convolution may be spatial")
    conv = _Conv(converter.constant(original["weight"]), converter.constant(original.get("bias")), p["weight"],
                 p.get("bias"), p.get("stride", 1), p.get("padding", 0), p.get("dilation", 1), p.get("groups", 1))
    return _emit(converter, node, x, conv)


def batch_norm(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """BatchNorm2d rule, eval mode only: ``(bn(a ⊙ m) ⊙ m, m)``. (One folded into a conv never gets here.)"""
    if converter.module_of(node).training:
        raise converter.unsupported(node, "module is in training mode")
    x = args[0]
    return converter.remasked(x, converter.call_module(node, x))


def _emit(converter: Converter, node: fx.Node, x: Spatial, conv: _Conv) -> Spatial:
    """Emit ``masked_conv2d`` for ``conv`` on ``x``, with the mask work it needs from the mask plan."""
    weight = conv.weight
    if weight is None:
        raise converter.unsupported(node, "the convolution weight must be a parameter or buffer of the model")
    if weight.dim() != 4:
        raise converter.unsupported(node, "only 2-D convolutions are supported")
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    in_channels = int(weight.shape[1]) * int(conv.groups)
    if converter.in_channels is None:
        converter.in_channels = in_channels
    stride, dilation = rules.pair(conv.stride), rules.pair(conv.dilation)
    padding, pre_pad = conv.padding, x.pre_pad
    if isinstance(padding, str):
        padding, extra = _string_padding(converter, node, padding, kernel, stride, dilation)
        if extra is not None:
            pre_pad = extra if pre_pad is None else add_pads(pre_pad, extra)
    padding = rules.pair(padding)
    if pre_pad is not None and pre_pad[0] == pre_pad[1] and pre_pad[2] == pre_pad[3]:
        # Symmetric explicit zero padding is the conv's own padding, moved out of the layer.
        padding, pre_pad = (padding[0] + pre_pad[2], padding[1] + pre_pad[0]), None
    weight_node, bias_node = _fold_following_batch_norm(converter, node, weight, conv.bias) or (
        conv.weight_node, conv.bias_node)
    iterations = max(dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
    coefficients = converter.plan.fill_coefficients(x.mask, iterations)
    ones = converter.ones_kernel(in_channels) if iterations else None
    out_mask = converter.plan.window(x.mask, kernel, stride, padding, dilation, False, pre_pad)
    y = converter.graph.call_function(masked_conv2d, (x.value, coefficients, ones, out_mask, weight_node, bias_node,
                                                      stride, padding, dilation, conv.groups, pre_pad))
    return Spatial(y, out_mask)


def _string_padding(converter: Converter, node: fx.Node, padding: str, kernel: tuple[int, int],
                    stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[tuple[int, int], Pad | None]:
    """``(the conv's own padding, explicit padding to add)`` for ``padding='valid'`` or ``'same'``."""
    if padding == "valid":
        return (0, 0), None
    if padding != "same" or stride != (1, 1):
        raise converter.unsupported(node, f"padding={padding!r} with stride {stride}")
    totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
    if all(t % 2 == 0 for t in totals):
        return (totals[0] // 2, totals[1] // 2), None
    return (0, 0), (totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2)


def _fold_following_batch_norm(converter: Converter, node: fx.Node, weight: torch.Tensor,
                               bias: torch.Tensor | None) -> tuple[fx.Node, fx.Node] | None:
    """Fold an eval-mode BatchNorm2d that is the conv's only consumer into the conv's weights.

    ``bn(y ⊙ m') ⊙ m' == bn(y) ⊙ m'`` for a binary ``m'``, so folding is exact up to rounding.
    """
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_module" or not rules.is_eval_batch_norm(converter.module_of(user)):
        return None
    bn = converter.module_of(user)
    assert isinstance(bn, nn.BatchNorm2d)
    if bn.running_mean is None or bn.running_var is None:
        return None
    fused_w, fused_b = fuse_conv_bn_weights(weight.detach(), None if bias is None else bias.detach(),
                                            bn.running_mean, bn.running_var, bn.eps,
                                            None if bn.weight is None else bn.weight.detach(),
                                            None if bn.bias is None else bn.bias.detach())
    converter.aliases[user] = node
    name = str(node.target if node.op == "call_module" else node.name).replace(".", "_")
    return converter.owned(f"{name}_folded_weight", fused_w), converter.owned(f"{name}_folded_bias", fused_b)
