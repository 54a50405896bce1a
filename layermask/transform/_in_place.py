"""Letting activations and neighbour fills overwrite their input where nothing else reads it.

``masked_conv2d``, ``apply_mask`` and ``masked_input`` each return a tensor of their own. When
such a tensor has exactly one user, that user may overwrite it: a ReLU or ReLU6 then runs in
place, and so does the neighbour fill of the next convolution (reading the activation through
the in-place ReLU). Each saves a full read and write of a feature map and its allocation.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from layermask.transform._conv_ops import masked_conv2d
from layermask.transform._elementwise_ops import apply_mask, masked_input

_FRESH = {masked_conv2d, apply_mask, masked_input}


def _owned(node: fx.Node) -> bool:
    """Whether ``node``'s tensor is its own (or an in-place result on such a tensor) and has one user."""
    if node.op != "call_function" or len(node.users) != 1:
        return False
    if node.target in _FRESH:
        return True
    if node.target in (F.relu, F.hardtanh) and node.kwargs.get("inplace"):
        source = node.args[0]
        return isinstance(source, fx.Node) and _owned(source)
    return False


def _in_place_activation(graph_module: fx.GraphModule, node: fx.Node) -> None:
    module = graph_module.get_submodule(str(node.target))
    if type(module) is nn.ReLU:
        target, args = F.relu, (node.args[0],)
    elif type(module) in (nn.ReLU6, nn.Hardtanh):
        target, args = F.hardtanh, (node.args[0], module.min_val, module.max_val)  # type: ignore[assignment]
    else:
        return
    with graph_module.graph.inserting_before(node):
        replacement = graph_module.graph.call_function(target, args, {"inplace": True})
    node.replace_all_uses_with(replacement)
    graph_module.graph.erase_node(node)


def run_in_place(graph_module: fx.GraphModule) -> None:
    """Rewrite ``graph_module``: in-place ReLU/ReLU6 on owned inputs, fills in place on owned activations."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        source = node.args[0] if node.args else None
        if node.op == "call_module" and isinstance(source, fx.Node) and _owned(source):
            _in_place_activation(graph_module, node)
    for node in graph.nodes:
        if node.op == "call_function" and node.target is masked_conv2d and node.args[1]:
            source = node.args[0]
            if isinstance(source, fx.Node) and _owned(source):
                node.update_kwarg("fill_in_place", True)
    graph.lint()
    graph_module.recompile()
