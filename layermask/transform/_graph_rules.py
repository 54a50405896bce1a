"""Emitting the layer-masking rules of ``layer-masking-spec.md`` into a new ``torch.fx`` graph.

:class:`GraphRules` holds the state of one conversion (the new graph, its mask plan, the mapping
from original nodes to new values) and one method per rule. :mod:`layermask.transform` walks the
original graph and dispatches each node to these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import _get_qualified_name
from torch.nn.utils.fusion import fuse_conv_bn_weights

from layermask.errors import UnsupportedLayerError
from layermask.transform import _ops as ops
from layermask.transform import _rules as rules
from layermask.transform._mask_plan import MaskPlan

_CONSTANTS = "_layermask_constants"


@dataclass(frozen=True)
class Spatial:
    """A spatial activation in the new graph, with its mask and any explicit padding still to apply."""

    value: fx.Node
    mask: fx.Node
    pre_pad: ops.Pad | None = None
    non_negative: bool = False


class GraphRules:
    """State of one conversion, and the emitters for each layer-masking rule."""

    def __init__(self, model: nn.Module, traced: fx.GraphModule) -> None:
        self.model = model
        self.traced = traced
        self.modules = dict(traced.named_modules())
        self.graph = fx.Graph()
        self.plan = MaskPlan(self.graph)
        # The new graph addresses the original's submodules and attributes by their original paths.
        self.root = nn.Module()
        for name, child in model.named_children():
            self.root.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.root.register_parameter(name, param)
        for name, buffer in model.named_buffers(recurse=False):
            self.root.register_buffer(name, buffer)
        self.root.add_module(_CONSTANTS, nn.Module())
        self.env: dict[fx.Node, Any] = {}
        self.aliases: dict[fx.Node, fx.Node] = {}
        self.constant_nodes: dict[str, fx.Node] = {}
        self.in_channels: int | None = None


    # ----------------------------------------------------------------- errors
    def _unsupported(self, node: fx.Node, reason: str = "") -> UnsupportedLayerError:
        if node.op == "call_module":
            module = self.modules[node.target]
            op = f"{type(module).__module__}.{type(module).__qualname__}"
            path = str(node.target)
        else:
            target = node.target
            op = f"Tensor.{target}" if isinstance(target, str) else _get_qualified_name(target)
            stack = node.meta.get("nn_module_stack") or {}
            path = next(reversed(stack)) if stack else ""
        return UnsupportedLayerError(op, path, node.name, reason)


    # ------------------------------------------------------------ helpers
    def _copy_on(self, node: fx.Node, *spatial: Spatial) -> fx.Node:
        """Copy ``node`` with spatial arguments replaced by their activation."""
        def arg(n: fx.Node) -> Any:
            value = self.env[n]
            return self._materialise(value).value if isinstance(value, Spatial) else value
        return self.graph.node_copy(node, arg)

    def _call_module(self, node: fx.Node, x: Spatial) -> fx.Node:
        return self.graph.call_module(f"{node.target}", (self._materialise(x).value,))

    def _remasked(self, x: Spatial, value: fx.Node) -> Spatial:
        x = self._materialise(x)
        return Spatial(self.graph.call_function(ops.apply_mask, (value, x.mask)), x.mask)

    def _materialise(self, x: Spatial) -> Spatial:
        """Apply pending explicit zero padding: padded positions are zeros that are not visible."""
        if x.pre_pad is None:
            return x
        value = self.graph.call_function(ops.pad_pair, (x.value, x.pre_pad))
        mask = self.plan.call(F.pad, x.mask, x.pre_pad)
        return Spatial(value, mask, None, x.non_negative)

    @staticmethod
    def _bind(node: fx.Node, names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = dict(zip(names, args))
        bound.update(kwargs)
        return bound

    @staticmethod
    def _hardtanh_bounds(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[float, float]:
        lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        return float(lo), float(hi)

    # ---------------------------------------------------------------- rules
    def _pad(self, node: fx.Node, x: Spatial, pad: tuple[int, ...]) -> Spatial:
        """Explicit zero padding stays pending until the consumer (usually a conv) applies it."""
        if len(pad) != 4:
            raise self._unsupported(node, f"padding {pad} is not a 2-D (left, right, top, bottom) padding")
        new = (int(pad[0]), int(pad[1]), int(pad[2]), int(pad[3]))
        return replace(x, pre_pad=new if x.pre_pad is None else ops.add_pads(x.pre_pad, new))

    def _functional_conv(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
        p = self._bind(node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"], args, kwargs)
        x = p["input"]
        if not isinstance(x, Spatial) or isinstance(p["weight"], Spatial):
            raise self._unsupported(node, "only the input of a convolution may be spatial")
        weight_node, bias_node = node.args[1], p.get("bias")
        weight = self._constant(weight_node)
        bias = self._constant(node.args[2]) if len(node.args) > 2 else self._constant(node.kwargs.get("bias"))
        return self._conv(node, x, weight, bias, p["weight"], bias_node, p.get("stride", 1), p.get("padding", 0),
                          p.get("dilation", 1), p.get("groups", 1))

    def _constant(self, original: Any) -> torch.Tensor | None:
        """The tensor behind a ``get_attr`` node of the original graph (None otherwise)."""
        if isinstance(original, fx.Node) and original.op == "get_attr":
            value: Any = self.traced
            for part in str(original.target).split("."):
                value = getattr(value, part)
            return value if isinstance(value, torch.Tensor) else None
        return None

    def _conv(self, node: fx.Node, x: Spatial, weight: torch.Tensor | None, bias: torch.Tensor | None,
              weight_node: Any, bias_node: Any, stride: Any, padding: Any, dilation: Any, groups: int) -> Spatial:
        if weight is None:
            raise self._unsupported(node, "the convolution weight must be a parameter or buffer of the model")
        if weight.dim() != 4:
            raise self._unsupported(node, "only 2-D convolutions are supported")
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        if self.in_channels is None:
            self.in_channels = int(weight.shape[1]) * int(groups)
        stride, dilation = rules.pair(stride), rules.pair(dilation)
        pre_pad = x.pre_pad
        if isinstance(padding, str):
            padding, extra = self._string_padding(node, padding, kernel, stride, dilation)
            if extra is not None:
                pre_pad = extra if pre_pad is None else ops.add_pads(pre_pad, extra)
        padding = rules.pair(padding)
        if pre_pad is not None and pre_pad[0] == pre_pad[1] and pre_pad[2] == pre_pad[3]:
            # Symmetric explicit zero padding is the conv's own padding, moved out of the layer.
            padding, pre_pad = (padding[0] + pre_pad[2], padding[1] + pre_pad[0]), None
        folded = self._fold_following_batch_norm(node, weight, bias)
        if folded is not None:
            weight_node, bias_node = folded
        iterations = max(dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        coefficients = self.plan.fill_coefficients(x.mask, iterations)
        ones = self._ones_kernel(int(weight.shape[1]) * int(groups)) if iterations else None
        out_mask = self.plan.window(x.mask, kernel, stride, padding, dilation, False, pre_pad)
        y = self.graph.call_function(ops.masked_conv2d, (x.value, coefficients, ones, out_mask, weight_node,
                                                         bias_node, stride, padding, dilation, groups, pre_pad))
        return Spatial(y, out_mask)

    def _string_padding(self, node: fx.Node, padding: str, kernel: tuple[int, int], stride: tuple[int, int],
                        dilation: tuple[int, int]) -> tuple[tuple[int, int], ops.Pad | None]:
        if padding == "valid":
            return (0, 0), None
        if padding != "same" or stride != (1, 1):
            raise self._unsupported(node, f"padding={padding!r} with stride {stride}")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if all(t % 2 == 0 for t in totals):
            return (totals[0] // 2, totals[1] // 2), None
        return (0, 0), (totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2)

    def _fold_following_batch_norm(self, node: fx.Node, weight: torch.Tensor,
                                   bias: torch.Tensor | None) -> tuple[fx.Node, fx.Node] | None:
        """Fold an eval-mode BatchNorm2d that is the conv's only consumer into the conv's weights.

        ``bn(y ⊙ m') ⊙ m' == bn(y) ⊙ m'`` for a binary ``m'``, so folding is exact up to rounding.
        """
        if len(node.users) != 1:
            return None
        (user,) = node.users
        if user.op != "call_module" or not rules.is_eval_batch_norm(self.modules[user.target]):
            return None
        bn = self.modules[user.target]
        if bn.running_mean is None or bn.running_var is None:
            return None
        fused_w, fused_b = fuse_conv_bn_weights(weight.detach(), None if bias is None else bias.detach(),
                                                bn.running_mean, bn.running_var, bn.eps,
                                                None if bn.weight is None else bn.weight.detach(),
                                                None if bn.bias is None else bn.bias.detach())
        self.aliases[user] = node
        name = str(node.target if node.op == "call_module" else node.name).replace(".", "_")
        return self._owned(f"{name}_folded_weight", fused_w), self._owned(f"{name}_folded_bias", fused_b)

    def _owned(self, name: str, value: torch.Tensor) -> fx.Node:
        """A tensor the converted graph owns (folded weights, fill kernels), as a ``get_attr`` node."""
        holder = getattr(self.root, _CONSTANTS)
        if name not in self.constant_nodes:
            holder.register_buffer(name, value.detach())
            self.constant_nodes[name] = self.graph.get_attr(f"{_CONSTANTS}.{name}")
        return self.constant_nodes[name]

    def _ones_kernel(self, channels: int) -> fx.Node:
        return self._owned(f"ones_{channels}x3x3", torch.ones(channels, 1, 3, 3))

    def _max_pool(self, x: Spatial, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                  ceil_mode: bool) -> Spatial:
        x = self._materialise(x)
        k, s = rules.pair(kernel_size), rules.pair(stride if stride is not None else kernel_size)
        p, d = rules.pair(padding), rules.pair(dilation)
        out_mask = self.plan.window(x.mask, k, s, p, d, bool(ceil_mode), None)
        y = self.graph.call_function(ops.masked_max_pool2d, (x.value, x.mask, out_mask, k, s, p, d, bool(ceil_mode),
                                                             x.non_negative))
        return Spatial(y, out_mask, None, x.non_negative)

    def _avg_pool(self, node: fx.Node, x: Spatial, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
                  count_include_pad: bool, divisor_override: Any) -> Spatial:
        if divisor_override is not None:
            raise self._unsupported(node, "divisor_override")
        x = self._materialise(x)
        k, p = rules.pair(kernel_size), rules.pair(padding)
        s = rules.pair(stride if stride is not None else kernel_size)
        stats = self.plan.call(ops.mask_avg_pool, x.mask, k, s, p, bool(ceil_mode), bool(count_include_pad))
        pooled = self.graph.call_function(F.avg_pool2d, (x.value, k, s, p, bool(ceil_mode), bool(count_include_pad)))
        y = self.graph.call_function(ops.divide_by_visible, (pooled, self.plan.item(stats, 0)))
        return Spatial(y, self.plan.item(stats, 1), None, x.non_negative)

    def _adaptive_avg_pool(self, x: Spatial, output_size: Any) -> Any:
        x = self._materialise(x)
        if rules.is_global_output_size(output_size):
            return self.graph.call_function(ops.global_masked_mean, (x.value, x.mask, (2, 3), True))
        size = rules.pair(output_size)
        stats = self.plan.call(ops.mask_adaptive_avg_pool, x.mask, size)
        pooled = self.graph.call_function(F.adaptive_avg_pool2d, (x.value, size))
        y = self.graph.call_function(ops.divide_by_visible, (pooled, self.plan.item(stats, 0)))
        return Spatial(y, self.plan.item(stats, 1), None, x.non_negative)

    def _global_mean(self, node: fx.Node, x: Spatial, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Node:
        dims = kwargs.get("dim", args[0] if args else None)
        keepdim = bool(kwargs.get("keepdim", args[1] if len(args) > 1 else False))
        normalised = sorted(d % 4 for d in ((dims,) if isinstance(dims, int) else (dims or ())))
        if normalised != [2, 3] or "dtype" in kwargs:
            raise self._unsupported(node, "only a mean over both spatial dimensions is supported")
        x = self._materialise(x)
        return self.graph.call_function(ops.global_masked_mean, (x.value, x.mask, (2, 3), keepdim))

    def _add_sub(self, node: fx.Node, args: tuple[Any, ...]) -> Spatial:
        left, right = args[0], args[1]
        if isinstance(left, Spatial) and isinstance(right, Spatial):
            left, right = self._materialise(left), self._materialise(right)
            value = self._copy_on(node)
            if left.mask is right.mask:
                return Spatial(value, left.mask)
            mask = self.plan.product(left.mask, right.mask)
            return Spatial(self.graph.call_function(ops.apply_mask, (value, mask)), mask)
        spatial = left if isinstance(left, Spatial) else right
        # Adding a constant is a pointwise function with f(0) != 0.
        return self._remasked(spatial, self._copy_on(node))

    def _mul_div(self, node: fx.Node, args: tuple[Any, ...]) -> Spatial:
        left, right = args[0], args[1]
        if isinstance(left, Spatial) and isinstance(right, Spatial):
            if self._materialise(left).mask is not self._materialise(right).mask:
                raise self._unsupported(node, "product of two spatial activations with different masks")
            return Spatial(self._copy_on(node), self._materialise(left).mask)
        if isinstance(right, Spatial) and node.target in rules.DIVISIONS:
            raise self._unsupported(node, "division by a spatial activation")
        spatial = left if isinstance(left, Spatial) else right
        # Scaling by a non-spatial tensor (e.g. squeeze-excitation) keeps hidden positions at 0.
        return Spatial(self._copy_on(node), self._materialise(spatial).mask)

    def _cat(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
        tensors = kwargs.get("tensors", args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if not all(isinstance(t, Spatial) for t in tensors):
            raise self._unsupported(node, "concatenation of spatial and non-spatial tensors")
        if dim not in (1, -3):
            raise self._unsupported(node, f"concatenation along dim {dim}; only channels (dim 1) are supported")
        parts = [self._materialise(t) for t in tensors]
        mask = self.plan.product(*(p.mask for p in parts))
        value = self._copy_on(node)
        if all(p.mask is mask for p in parts):
            return Spatial(value, mask, None, all(p.non_negative for p in parts))
        return Spatial(self.graph.call_function(ops.apply_mask, (value, mask)), mask, None,
                        all(p.non_negative for p in parts))
