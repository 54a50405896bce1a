"""``layer_mask``: turn a CNN into its layer-masked version with ``torch.fx``.

:class:`Converter` walks the original graph once. Every spatial activation of the original becomes
a pair ``(activation node, mask node)`` in a new graph (:class:`~layermask.transform._spatial.Spatial`);
operations on plain tensors (classifier heads, squeeze-excitation branches) are copied unchanged. A
node that touches a spatial activation is converted by the emitter that
:mod:`layermask.transform._dispatch` finds for its module type, function or tensor method; the
emitters build on the helpers here. Mask computations go through the mask plan
(:mod:`layermask.transform._mask_plan`), which emits each distinct one once, so a forward pass
computes every grown mask, fill coefficient and pooled mask a single time however many layers use it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import _get_qualified_name

from layermask.errors import UnsupportedLayerError
from layermask.transform import _dispatch as dispatch
from layermask.transform._conv_fusion import fuse_conv_activations
from layermask.transform._elementwise_ops import apply_mask, masked_input
from layermask.transform._fill_pruning import prune_fill_iterations
from layermask.transform._in_place import run_in_place
from layermask.transform._mask_plan import MaskPlan
from layermask.transform._pad_ops import pad_pair
from layermask.transform._spatial import Spatial
from layermask.transform.model import LayerMaskedModel

__all__ = ["Converter", "layer_mask"]

_CONSTANTS = "_layermask_constants"


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
    return Converter(model, traced).convert(prune_fill)


class Converter:
    """One conversion: the new graph and its mask plan, the original-to-new node mapping, and the
    helpers the rule emitters share."""

    def __init__(self, model: nn.Module, traced: fx.GraphModule) -> None:
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
        # Original nodes whose value is another's (a batch norm folded into the conv before it).
        self.aliases: dict[fx.Node, fx.Node] = {}
        self.constant_nodes: dict[str, fx.Node] = {}
        self._materialised: dict[Spatial, Spatial] = {}
        self.in_channels: int | None = None

    # ------------------------------------------------------------- graph walk
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
                self.env[node] = Spatial(self.graph.call_function(masked_input, (images, masks)), masks)
            elif node.op == "output":
                self.graph.output(self._plain(self._map(node.args[0])))
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

    def _convert_spatial(self, node: fx.Node) -> Any:
        """Convert a node that touches a spatial activation with the emitter its op is registered to."""
        args, kwargs = self._map(node.args), self._map(node.kwargs)
        rule: dispatch.Rule | None = None
        if node.op == "call_module":
            if len(args) != 1 or not isinstance(args[0], Spatial) or kwargs:
                raise self.unsupported(node, "expected a single spatial input")
            rule = dispatch.module_rule(self.module_of(node))
        elif node.op == "call_function":
            rule = dispatch.FUNCTION_RULES.get(node.target)
        elif node.op == "call_method":
            if not isinstance(args[0], Spatial):
                raise self.unsupported(node, "a spatial activation is used as an argument of a tensor method")
            rule = dispatch.METHOD_RULES.get(str(node.target))
        if rule is None:
            raise self.unsupported(node)
        return rule(self, node, args, kwargs)

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

    def _plain(self, value: Any) -> Any:
        """A graph output: spatial values leave as their (masked) activation."""
        if isinstance(value, Spatial):
            return self.materialise(value).value
        if isinstance(value, (tuple, list)):
            return type(value)(self._plain(v) for v in value)
        return value

    # ------------------------------------------------- helpers for emitters
    def module_of(self, node: fx.Node) -> nn.Module:
        """The original model's submodule that a ``call_module`` node calls."""
        return self.modules[str(node.target)]

    def spatial_input(self, node: fx.Node, args: tuple[Any, ...]) -> Spatial:
        """The node's first argument, which its rule needs to be spatial (else the op is unsupported)."""
        x = args[0] if args else None
        if not isinstance(x, Spatial):
            raise self.unsupported(node)
        return x

    def materialise(self, x: Spatial) -> Spatial:
        """Apply pending explicit zero padding (once per pair): padded positions are zeros that are not visible."""
        if x.pre_pad is None:
            return x
        if x not in self._materialised:
            value = self.graph.call_function(pad_pair, (x.value, x.pre_pad))
            mask = self.plan.call(F.pad, x.mask, x.pre_pad)
            self._materialised[x] = Spatial(value, mask, None, x.non_negative)
        return self._materialised[x]

    def remasked(self, x: Spatial, value: fx.Node) -> Spatial:
        """``(value ⊙ m, m)`` for an op on ``x`` that can make hidden positions non-zero."""
        x = self.materialise(x)
        return Spatial(self.graph.call_function(apply_mask, (value, x.mask)), x.mask)

    def copy_on(self, node: fx.Node) -> fx.Node:
        """Copy ``node`` into the new graph with spatial arguments replaced by their (padded) activation."""
        def arg(n: fx.Node) -> Any:
            value = self.env[n]
            return self.materialise(value).value if isinstance(value, Spatial) else value
        return self.graph.node_copy(node, arg)

    def copy_before_padding(self, node: fx.Node) -> fx.Node:
        """Copy ``node`` applying it to spatial activations *before* their pending zero padding, which
        stays pending: right for ops that commute with zero padding (pointwise with f(0) == 0)."""
        def arg(n: fx.Node) -> Any:
            value = self.env[n]
            return value.value if isinstance(value, Spatial) else value
        return self.graph.node_copy(node, arg)

    def call_module(self, node: fx.Node, x: Spatial) -> fx.Node:
        """Call ``node``'s module on the (padded) activation of ``x``."""
        return self.graph.call_module(f"{node.target}", (self.materialise(x).value,))

    def constant(self, original: Any) -> torch.Tensor | None:
        """The tensor behind a ``get_attr`` node of the original graph (None otherwise)."""
        if isinstance(original, fx.Node) and original.op == "get_attr":
            value: Any = self.traced
            for part in str(original.target).split("."):
                value = getattr(value, part)
            return value if isinstance(value, torch.Tensor) else None
        return None

    def owned(self, name: str, value: torch.Tensor) -> fx.Node:
        """A tensor the converted graph owns (folded weights, fill kernels), as a ``get_attr`` node."""
        holder = getattr(self.root, _CONSTANTS)
        if name not in self.constant_nodes:
            holder.register_buffer(name, value.detach())
            self.constant_nodes[name] = self.graph.get_attr(f"{_CONSTANTS}.{name}")
        return self.constant_nodes[name]

    def ones_kernel(self, channels: int) -> fx.Node:
        """The C×1×3×3 ones kernel of the depthwise neighbour sum, shared by every fill over C channels."""
        return self.owned(f"ones_{channels}x3x3", torch.ones(channels, 1, 3, 3))

    def unsupported(self, node: fx.Node, reason: str = "") -> UnsupportedLayerError:
        """The error for a node layer masking has no rule for, naming the op, its module path and the node."""
        if node.op == "call_module":
            module = self.module_of(node)
            op = f"{type(module).__module__}.{type(module).__qualname__}"
            path = str(node.target)
        else:
            target = node.target
            op = f"Tensor.{target}" if isinstance(target, str) else _get_qualified_name(target)
            stack = node.meta.get("nn_module_stack") or {}
            path = next(reversed(stack)) if stack else ""
        return UnsupportedLayerError(op, path, node.name, reason)
