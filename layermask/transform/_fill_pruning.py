"""Dropping neighbour-fill iterations whose results a later mask discards.

A stride-1 conv with a centred k×k window needs ``d·(k−1)`` fill iterations so that *every*
output with at least one visible input sees a fully filled window. But when each path from its
output is spatially pointwise (batch norm, activations, 1×1 convs, residual sums) up to a
re-masking by the conv's own *input* mask, as in ResNet, MobileNet and EfficientNet residual
blocks or DenseNet concatenations, only outputs whose centre pixel is visible survive. Their
windows lie within ``d·(k−1)/2`` of a visible pixel, so that many iterations give identical final
outputs: ResNet's 3×3 convs need one iteration instead of two, EfficientNet's 5×5 two instead of
four.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from layermask.transform import _rules as rules
from layermask.transform._conv_ops import masked_conv2d
from layermask.transform._elementwise_ops import apply_mask
from layermask.transform._fill_ops import mask_fill_step
from layermask.transform._window_ops import mask_max_pool

_POINTWISE_FUNCTIONS: set[Any] = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
                                  torch.cat, operator.mul, operator.imul, torch.mul}
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d, nn.Hardtanh, *rules.ZERO_PRESERVING_MODULES, *rules.REMASKED_MODULES, *rules.PASSTHROUGH_MODULES,
)


def _args(node: fx.Node) -> tuple[Any, ...]:
    return tuple(node.args)


def _conv_input_mask(conv: fx.Node) -> fx.Node | None:
    """The input mask of a ``masked_conv2d`` node that fills, read off its first fill step."""
    coefficients = _args(conv)[1]
    if not coefficients:
        return None
    step = _args(coefficients[0])[0]  # getitem(mask_fill_step(mask, kernel), 0)
    return _args(step)[0] if step.target is mask_fill_step else None


def _centred_stride_one(window: Any) -> tuple[int, int] | None:
    """``(kernel, dilation)`` if a ``mask_max_pool`` node's window is square, centred, odd and stride 1."""
    if not isinstance(window, fx.Node) or window.target is not mask_max_pool:
        return None
    _, kernel, stride, padding, dilation, ceil_mode, pre_pad = _args(window)
    if stride != (1, 1) or ceil_mode or pre_pad is not None or kernel[0] != kernel[1] or dilation[0] != dilation[1]:
        return None
    k, d = kernel[0], dilation[0]
    if k % 2 == 0 or padding != (d * (k - 1) // 2,) * 2:
        return None
    return k, d


def _covers(big: fx.Node, small: fx.Node) -> bool:
    """Is mask ``big`` ≥ ``small`` everywhere because it is ``small`` grown by centred stride-1 windows?"""
    while big is not small:
        if _centred_stride_one(big) is None:
            return False
        big = _args(big)[0]
    return True


def _is_pointwise_conv(user: fx.Node, value: fx.Node, graph_module: fx.GraphModule) -> bool:
    """A 1×1, stride-1 ``masked_conv2d`` reading ``value``: each output position sees one input position."""
    args = _args(user)
    weight = args[4]
    if args[0] is not value or args[1] or args[6] != (1, 1) or args[10] is not None:
        return False
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return False
    tensor: Any = functools.reduce(getattr, str(weight.target).split("."), graph_module)
    return isinstance(tensor, torch.Tensor) and tuple(tensor.shape[-2:]) == (1, 1)


def _is_pointwise(user: fx.Node, value: fx.Node, graph_module: fx.GraphModule,
                  modules: dict[str, nn.Module]) -> bool:
    if user.op == "call_module":
        return isinstance(modules.get(str(user.target)), _POINTWISE_MODULES)
    if user.op == "call_method":
        return user.target in rules.ZERO_PRESERVING_METHODS | rules.REMASKED_METHODS | rules.ADD_SUB_METHODS
    if user.op != "call_function":
        return False
    if user.target is masked_conv2d:
        return _is_pointwise_conv(user, value, graph_module)
    return user.target in _POINTWISE_FUNCTIONS or user.target in rules.ZERO_PRESERVING_FUNCTIONS \
        or user.target in rules.REMASKED_FUNCTIONS


def _restricted_to(value: fx.Node, mask: fx.Node, graph_module: fx.GraphModule,
                   modules: dict[str, nn.Module]) -> bool:
    """Does every path from ``value`` reach ``apply_mask(·, m)``, with ``m`` ≤ ``mask``, through pointwise ops?"""
    pending, seen = [value], set()
    while pending:
        node = pending.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.target is apply_mask and _args(user)[0] is node:
                if not _covers(mask, _args(user)[1]):
                    pending.append(user)
            elif user.target is apply_mask or not _is_pointwise(user, node, graph_module, modules):
                return False
            else:
                pending.append(user)
    return True


def prune_fill_iterations(graph_module: fx.GraphModule) -> int:
    """Shorten the fill of convs whose off-centre outputs are discarded; returns iterations saved."""
    modules = dict(graph_module.named_modules())
    saved = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target is not masked_conv2d:
            continue
        mask, geometry = _conv_input_mask(node), _centred_stride_one(_args(node)[3])
        if mask is None or geometry is None or _args(node)[10] is not None:
            continue
        kernel, dilation = geometry
        needed = dilation * (kernel - 1) // 2
        coefficients = _args(node)[1]
        if needed < len(coefficients) and _restricted_to(node, mask, graph_module, modules):
            node.update_arg(1, tuple(coefficients[:needed]))
            saved += len(coefficients) - needed
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return saved
