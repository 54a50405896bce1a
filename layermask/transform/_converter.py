"""``layer_mask``: turn a CNN into its layer-masked version with ``torch.fx``.

The original graph is walked once. Every spatial activation of the original becomes a pair
``(activation node, mask node)`` in a new graph; operations on plain tensors (classifier heads,
squeeze-excitation branches) are copied unchanged. Mask computations go through the mask plan
(:mod:`layermask.transform._mask_plan`),
which emits each distinct one once, so a forward pass computes every grown mask, fill coefficient
and pooled mask a single time however many layers use it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from layermask.transform import _ops as ops
from layermask.transform import _rules as rules
from layermask.transform._conv_fusion import fuse_conv_activations
from layermask.transform._fill_pruning import prune_fill_iterations
from layermask.transform._graph_rules import GraphRules, Spatial
from layermask.transform._in_place import run_in_place
from layermask.transform.model import LayerMaskedModel

__all__ = ["LayerMaskedModel", "layer_mask"]


def layer_mask(model: nn.Module, *, prune_fill: bool = True) -> LayerMaskedModel:
    """Convert ``model`` (an eval-mode, ``torch.fx``-traceable CNN) into its layer-masked version.

    The result shares parameters with ``model``, except that batch-norm layers directly following
    a convolution are folded into a copy of its weights: convert again after changing the weights.
    Raises :class:`~layermask.UnsupportedLayerError` if an operation on a spatial activation has
    no layer-masking rule, and ``ValueError`` for a model in training mode.

    ``prune_fill`` drops neighbour-fill iterations whose results a later mask discards
    (:mod:`layermask.transform._fill_pruning`); the outputs are the same either way.
    """
    if model.training:
        raise ValueError(
            "layer_mask needs a model in eval mode (batch norm must use running statistics and dropout "
            "must be off); call model.eval() before converting"
        )
    traced = fx.symbolic_trace(model)
    return _Converter(model, traced).convert(prune_fill)



class _Converter(GraphRules):
    # ----------------------------------------------------------------- driver
    def convert(self, prune_fill: bool) -> LayerMaskedModel:
        images = self.graph.placeholder("images")
        masks = self.graph.placeholder("masks")
        seen_input = False
        for node in self.traced.graph.nodes:
            if node in self.aliases:
                self.env[node] = self.env[self.aliases[node]]
            elif node.op == "placeholder":
                if seen_input:
                    raise ValueError(f"layer_mask supports models with one image input; found another: {node.name!r}")
                seen_input = True
                self.env[node] = Spatial(self.graph.call_function(ops.masked_input, (images, masks)), masks)
            elif node.op == "output":
                self.graph.output(self._plain(self._map(node.args[0]), node))
            elif node.op == "get_attr":
                self.env[node] = self.graph.get_attr(f"{node.target}")
            elif not self._touches_spatial(node):
                self.env[node] = self.graph.node_copy(node, self._copy_arg)
            else:
                self.env[node] = self._convert_spatial(node)
        graph_module = fx.GraphModule(self.root, self.graph, class_name="LayerMaskedGraph")
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
        if prune_fill:
            prune_fill_iterations(graph_module)
        fuse_conv_activations(graph_module)
        run_in_place(graph_module)
        return LayerMaskedModel(graph_module, self.in_channels)

    def _copy_arg(self, node: fx.Node) -> Any:
        value = self.env[node]
        if isinstance(value, Spatial):
            raise AssertionError(f"spatial value reached a plain copy at {node.name}")
        return value

    def _map(self, arg: Any) -> Any:
        return fx.node.map_arg(arg, lambda n: self.env[n])

    def _touches_spatial(self, node: fx.Node) -> bool:
        found = False

        def visit(n: fx.Node) -> fx.Node:
            nonlocal found
            found = found or isinstance(self.env.get(n), Spatial)
            return n

        fx.node.map_arg((node.args, node.kwargs), visit)
        return found

    def _plain(self, value: Any, node: fx.Node) -> Any:
        """A graph output: spatial values leave as their (masked) activation."""
        if isinstance(value, Spatial):
            return self._materialise(value).value
        if isinstance(value, (tuple, list)):
            return type(value)(self._plain(v, node) for v in value)
        return value

    # --------------------------------------------------------------- dispatch
    def _convert_spatial(self, node: fx.Node) -> Any:
        if node.op == "call_module":
            return self._convert_module(node, self.modules[node.target])
        if node.op == "call_function":
            return self._convert_function(node)
        if node.op == "call_method":
            return self._convert_method(node)
        raise self._unsupported(node)

    def _convert_module(self, node: fx.Node, module: nn.Module) -> Any:
        x = self.env[node.args[0]] if len(node.args) == 1 and isinstance(node.args[0], fx.Node) else None
        if not isinstance(x, Spatial) or node.kwargs:
            raise self._unsupported(node, "expected a single spatial input")
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                raise self._unsupported(node, f"padding_mode={module.padding_mode!r}; only zero padding is supported")
            weight = self.graph.get_attr(f"{node.target}.weight")
            bias = self.graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
            return self._conv(node, x, module.weight, module.bias, weight, bias,
                              module.stride, module.padding, module.dilation, module.groups)
        if rules.is_eval_batch_norm(module):
            return self._remasked(x, self._call_module(node, x))
        if isinstance(module, (nn.BatchNorm2d, nn.Dropout)) and module.training:
            raise self._unsupported(node, "module is in training mode")
        if isinstance(module, rules.ZERO_PRESERVING_MODULES) or rules.is_hardtanh_zero_preserving(module):
            non_negative = isinstance(module, rules.NON_NEGATIVE_MODULES) or (
                isinstance(module, nn.Hardtanh) and module.min_val >= 0)
            return replace(x, value=self._call_module(node, x), non_negative=non_negative)
        if isinstance(module, rules.REMASKED_MODULES):
            return replace(self._remasked(x, self._call_module(node, x)), non_negative=True)
        if isinstance(module, rules.PASSTHROUGH_MODULES):
            return x
        if isinstance(module, nn.ZeroPad2d):
            return self._pad(node, x, tuple(module.padding))
        if isinstance(module, nn.MaxPool2d):
            if module.return_indices:
                raise self._unsupported(node, "return_indices=True")
            return self._max_pool(x, module.kernel_size, module.stride, module.padding, module.dilation,
                                  module.ceil_mode)
        if isinstance(module, nn.AvgPool2d):
            return self._avg_pool(node, x, module.kernel_size, module.stride, module.padding, module.ceil_mode,
                                  module.count_include_pad, module.divisor_override)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return self._adaptive_avg_pool(x, module.output_size)
        if isinstance(module, nn.Flatten):
            return self.graph.call_module(f"{node.target}", (self._materialise(x).value,))
        raise self._unsupported(node)

    def _convert_function(self, node: fx.Node) -> Any:
        fn = node.target
        args = self._map(node.args)
        kwargs = self._map(node.kwargs)
        x = args[0] if args else None
        if fn is F.conv2d:
            return self._functional_conv(node, args, kwargs)
        if fn in rules.PASSTHROUGH_FUNCTIONS:
            training = kwargs.get("training", args[rules.PASSTHROUGH_FUNCTIONS[fn]]
                                  if len(args) > rules.PASSTHROUGH_FUNCTIONS[fn] else True)
            if training:
                raise self._unsupported(node, "called with training=True")
            return x
        if fn in rules.ZERO_PRESERVING_FUNCTIONS and isinstance(x, Spatial):
            return replace(x, value=self._copy_on(node, x), non_negative=fn in rules.NON_NEGATIVE_FUNCTIONS)
        if fn is F.hardtanh and isinstance(x, Spatial):
            lo, hi = self._hardtanh_bounds(args, kwargs)
            if lo <= 0.0 <= hi:
                return replace(x, value=self._copy_on(node, x), non_negative=lo >= 0)
        if fn in rules.REMASKED_FUNCTIONS and isinstance(x, Spatial):
            return replace(self._remasked(x, self._copy_on(node, x)), non_negative=fn in rules.NON_NEGATIVE_FUNCTIONS)
        if fn in rules.ADD_SUB:
            return self._add_sub(node, args)
        if fn in rules.MUL_DIV:
            return self._mul_div(node, args)
        if fn is torch.cat:
            return self._cat(node, args, kwargs)
        if fn in rules.FLATTEN_FUNCTIONS and isinstance(x, Spatial):
            return self._copy_on(node, self._materialise(x))
        if fn is F.pad and isinstance(x, Spatial):
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            value = kwargs.get("value", args[3] if len(args) > 3 else None)
            if mode != "constant" or value not in (None, 0, 0.0):
                raise self._unsupported(node, "only zero padding is supported")
            return self._pad(node, x, tuple(kwargs.get("pad", args[1] if len(args) > 1 else ())))
        if fn is F.max_pool2d and isinstance(x, Spatial):
            p = self._bind(node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                  "return_indices"], args, kwargs)
            if p.get("return_indices"):
                raise self._unsupported(node, "return_indices=True")
            return self._max_pool(x, p["kernel_size"], p.get("stride") or p["kernel_size"], p.get("padding", 0),
                                  p.get("dilation", 1), p.get("ceil_mode", False))
        if fn is F.avg_pool2d and isinstance(x, Spatial):
            p = self._bind(node, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override"], args, kwargs)
            return self._avg_pool(node, x, p["kernel_size"], p.get("stride") or p["kernel_size"],
                                  p.get("padding", 0), p.get("ceil_mode", False), p.get("count_include_pad", True),
                                  p.get("divisor_override"))
        if fn is F.adaptive_avg_pool2d and isinstance(x, Spatial):
            return self._adaptive_avg_pool(x, kwargs.get("output_size", args[1] if len(args) > 1 else None))
        if fn is getattr and isinstance(x, Spatial) and args[1] in rules.METADATA_ATTRIBUTES:
            return self._copy_on(node, x)
        if fn is torch.mean and isinstance(x, Spatial):
            return self._global_mean(node, x, args[1:], kwargs)
        raise self._unsupported(node)

    def _convert_method(self, node: fx.Node) -> Any:
        name = str(node.target)
        args = self._map(node.args)
        kwargs = self._map(node.kwargs)
        x = args[0]
        if not isinstance(x, Spatial):
            raise self._unsupported(node, "a spatial activation is used as an argument of a tensor method")
        if name in rules.PASSTHROUGH_METHODS:
            return replace(x, value=self._copy_on(node, x))
        if name in rules.METADATA_METHODS:
            return self._copy_on(node, x)
        if name in rules.ZERO_PRESERVING_METHODS:
            return replace(x, value=self._copy_on(node, x), non_negative=name in rules.NON_NEGATIVE_METHODS)
        if name in rules.REMASKED_METHODS:
            return replace(self._remasked(x, self._copy_on(node, x)), non_negative=True)
        if name in rules.ADD_SUB_METHODS:
            return self._add_sub(node, args)
        if name in rules.MUL_DIV_METHODS:
            return self._mul_div(node, args)
        if name in rules.FLATTEN_METHODS:
            return self._copy_on(node, self._materialise(x))
        if name in rules.GLOBAL_MEAN_METHODS:
            return self._global_mean(node, x, args[1:], kwargs)
        raise self._unsupported(node)
