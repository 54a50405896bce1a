"""Emitters for the pooling rules of ``layer-masking-spec.md``: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d
(modules and functions) and global means (``torch.mean``, ``Tensor.mean``).

Max-pool: hidden positions never win, and an all-hidden window gives 0; the output mask is the
max-pool of the mask. Average pools: ``pool(a ⊙ m) / pool(m)``, 0 where ``pool(m) == 0``, with output
mask ``pool(m) > 0``. A global pool leaves the spatial domain: its output is a plain tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from layermask.transform import _rules as rules
from layermask.transform._spatial import Spatial
from layermask.transform._window_ops import (
    divide_by_visible,
    global_masked_mean,
    mask_adaptive_avg_pool,
    mask_avg_pool,
    masked_max_pool2d,
)

if TYPE_CHECKING:
    from layermask.transform._converter import Converter

_MAX_POOL_PARAMETERS = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
_AVG_POOL_PARAMETERS = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                        "divisor_override"]


def max_pool_module(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """MaxPool2d rule for an ``nn.MaxPool2d``."""
    module = converter.module_of(node)
    assert isinstance(module, nn.MaxPool2d)
    if module.return_indices:
        raise converter.unsupported(node, "return_indices=True")
    return _max_pool(converter, args[0], module.kernel_size, module.stride, module.padding, module.dilation,
                     module.ceil_mode)


def max_pool_function(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """MaxPool2d rule for ``F.max_pool2d``."""
    x = converter.spatial_input(node, args)
    p = rules.bind(_MAX_POOL_PARAMETERS, args, kwargs)
    if p.get("return_indices"):
        raise converter.unsupported(node, "return_indices=True")
    return _max_pool(converter, x, p["kernel_size"], p.get("stride") or p["kernel_size"], p.get("padding", 0),
                     p.get("dilation", 1), p.get("ceil_mode", False))


def avg_pool_module(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """AvgPool2d rule for an ``nn.AvgPool2d``."""
    module = converter.module_of(node)
    assert isinstance(module, nn.AvgPool2d)
    return _avg_pool(converter, node, args[0], module.kernel_size, module.stride, module.padding, module.ceil_mode,
                     module.count_include_pad, module.divisor_override)


def avg_pool_function(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """AvgPool2d rule for ``F.avg_pool2d``."""
    x = converter.spatial_input(node, args)
    p = rules.bind(_AVG_POOL_PARAMETERS, args, kwargs)
    return _avg_pool(converter, node, x, p["kernel_size"], p.get("stride") or p["kernel_size"], p.get("padding", 0),
                     p.get("ceil_mode", False), p.get("count_include_pad", True), p.get("divisor_override"))


def adaptive_avg_pool_module(converter: Converter, node: fx.Node, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> Any:
    """AdaptiveAvgPool2d rule for an ``nn.AdaptiveAvgPool2d``."""
    module = converter.module_of(node)
    assert isinstance(module, nn.AdaptiveAvgPool2d)
    return _adaptive_avg_pool(converter, args[0], module.output_size)


def adaptive_avg_pool_function(converter: Converter, node: fx.Node, args: tuple[Any, ...],
                               kwargs: dict[str, Any]) -> Any:
    """AdaptiveAvgPool2d rule for ``F.adaptive_avg_pool2d``."""
    x = converter.spatial_input(node, args)
    return _adaptive_avg_pool(converter, x, kwargs.get("output_size", args[1] if len(args) > 1 else None))


def global_mean(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Node:
    """Global average pool rule for ``torch.mean`` / ``Tensor.mean`` over both spatial dimensions: a plain tensor."""
    x = converter.spatial_input(node, args)
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
    normalised = sorted(d % 4 for d in ((dims,) if isinstance(dims, int) else (dims or ())))
    if normalised != [2, 3] or "dtype" in kwargs:
        raise converter.unsupported(node, "only a mean over both spatial dimensions is supported")
    x = converter.materialise(x)
    return converter.graph.call_function(global_masked_mean, (x.value, x.mask, (2, 3), keepdim))


def _max_pool(converter: Converter, x: Spatial, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool) -> Spatial:
    x = converter.materialise(x)
    k, s = rules.pair(kernel_size), rules.pair(stride if stride is not None else kernel_size)
    p, d = rules.pair(padding), rules.pair(dilation)
    out_mask = converter.plan.window(x.mask, k, s, p, d, bool(ceil_mode), None)
    y = converter.graph.call_function(masked_max_pool2d, (x.value, x.mask, out_mask, k, s, p, d, bool(ceil_mode),
                                                          x.non_negative))
    return Spatial(y, out_mask, None, x.non_negative)


def _avg_pool(converter: Converter, node: fx.Node, x: Spatial, kernel_size: Any, stride: Any, padding: Any,
              ceil_mode: bool, count_include_pad: bool, divisor_override: Any) -> Spatial:
    if divisor_override is not None:
        raise converter.unsupported(node, "divisor_override")
    x = converter.materialise(x)
    k, p = rules.pair(kernel_size), rules.pair(padding)
    s = rules.pair(stride if stride is not None else kernel_size)
    plan, graph = converter.plan, converter.graph
    stats = plan.call(mask_avg_pool, x.mask, k, s, p, bool(ceil_mode), bool(count_include_pad))
    pooled = graph.call_function(F.avg_pool2d, (x.value, k, s, p, bool(ceil_mode), bool(count_include_pad)))
    y = graph.call_function(divide_by_visible, (pooled, plan.item(stats, 0)))
    return Spatial(y, plan.item(stats, 1), None, x.non_negative)


def _adaptive_avg_pool(converter: Converter, x: Spatial, output_size: Any) -> Any:
    x = converter.materialise(x)
    plan, graph = converter.plan, converter.graph
    if rules.is_global_output_size(output_size):
        return graph.call_function(global_masked_mean, (x.value, x.mask, (2, 3), True))
    size = rules.pair(output_size)
    stats = plan.call(mask_adaptive_avg_pool, x.mask, size)
    pooled = graph.call_function(F.adaptive_avg_pool2d, (x.value, size))
    y = graph.call_function(divide_by_visible, (pooled, plan.item(stats, 0)))
    return Spatial(y, plan.item(stats, 1), None, x.non_negative)
