"""Folding the activation that follows a masked convolution into the convolution.

A ReLU or ReLU6 that only reads a ``masked_conv2d`` output commutes with the re-masking (both map
0 to 0), so ``act(conv(a) ⊙ m) = act(conv(a)) ⊙ m``. oneDNN can apply the activation as a post-op
of the convolution itself, which saves a full pass over the feature map. ``masked_conv2d`` takes
the activation as ``activation=(name, scalars)`` and falls back to separate ops where oneDNN's
fused convolution is not available (:mod:`layermask.transform._onednn`), as in the ONNX export.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from layermask.transform._conv_ops import masked_conv2d
from layermask.transform._onednn import Activation


def _activation(graph_module: fx.GraphModule, node: fx.Node) -> Activation | None:
    """``(name, scalars)`` of a zero-preserving ReLU-family activation node, else None."""
    if node.op == "call_module":
        module = graph_module.get_submodule(str(node.target))
        if type(module) is nn.ReLU:
            return "relu", ()
        if type(module) in (nn.ReLU6, nn.Hardtanh) and module.min_val <= 0.0 <= module.max_val:  # type: ignore[operator]
            return "hardtanh", (float(module.min_val), float(module.max_val))  # type: ignore[arg-type]
        return None
    if node.op == "call_function" and node.target in (F.relu, F.relu6) and len(node.args) == 1:
        return ("relu", ()) if node.target is F.relu else ("hardtanh", (0.0, 6.0))
    return None


def fuse_conv_activations(graph_module: fx.GraphModule) -> None:
    """Move each ReLU/ReLU6 that is the only user of a ``masked_conv2d`` into that node."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not masked_conv2d or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        activation = _activation(graph_module, user)
        if activation is None or user.args[0] is not node:
            continue
        node.update_kwarg("activation", activation)
        user.replace_all_uses_with(node)
        graph.erase_node(user)
    graph.lint()
    graph_module.recompile()
