"""Emitters for the position-by-position rules of ``layer-masking-spec.md``.

Pointwise activations, pass-through ops (identity, eval-mode dropout, stochastic depth), residual
sums, scaling by non-spatial tensors, channel concatenation, explicit zero padding, flattening, and
reads of a spatial activation's metadata. None of them mixes positions, so each keeps or combines
the masks of its operands.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch.fx as fx
from torch import nn

from layermask.transform import _rules as rules
from layermask.transform._elementwise_ops import apply_mask
from layermask.transform._pad_ops import add_pads
from layermask.transform._spatial import Spatial

if TYPE_CHECKING:
    from layermask.transform._converter import Converter


def _before_padding(converter: Converter, node: fx.Node, x: Spatial) -> fx.Node:
    """``node``'s op on ``x`` before its pending zero padding, for ops that commute with zero padding: the
    padding then stays pending, so that it is never taken for hidden input that a fill may overwrite."""
    if node.op == "call_module":
        return converter.graph.call_module(str(node.target), (x.value,))
    return converter.copy_before_padding(node)


def _op(converter: Converter, node: fx.Node) -> Any:
    return converter.module_of(node) if node.op == "call_module" else node.target


def zero_preserving(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Pointwise rule for ``f(0) == 0`` (ReLU, SiLU, GELU, …): ``f(a ⊙ m) ⊙ m == f(a)``, so no re-masking."""
    x = converter.spatial_input(node, args)
    return replace(x, value=_before_padding(converter, node, x),
                   non_negative=rules.is_non_negative(_op(converter, node)))


def remasked(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Pointwise rule for ``f(0) != 0`` (Sigmoid, Hardsigmoid, Softplus): ``(f(a ⊙ m) ⊙ m, m)``."""
    x = converter.materialise(converter.spatial_input(node, args))
    value = converter.call_module(node, x) if node.op == "call_module" else converter.copy_on(node)
    return replace(converter.remasked(x, value), non_negative=rules.is_non_negative(_op(converter, node)))


def hardtanh_module(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Pointwise rule for an ``nn.Hardtanh`` whose bounds contain 0 (others are unsupported)."""
    module = converter.module_of(node)
    assert isinstance(module, nn.Hardtanh)
    if not rules.is_zero_preserving_hardtanh(module.min_val, module.max_val):
        raise converter.unsupported(node)
    return zero_preserving(converter, node, args, kwargs)


def hardtanh_function(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Pointwise rule for ``F.hardtanh`` with bounds that contain 0 (others are unsupported)."""
    x = converter.spatial_input(node, args)
    low = float(kwargs.get("min_val", args[1] if len(args) > 1 else -1.0))
    high = float(kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
    if not rules.is_zero_preserving_hardtanh(low, high):
        raise converter.unsupported(node)
    return replace(x, value=_before_padding(converter, node, x), non_negative=low >= 0)


def identity(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Identity rule: pass the pair through."""
    return args[0]


def dropout_module(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Dropout in eval mode is the identity; in training mode it is refused."""
    if converter.module_of(node).training:
        raise converter.unsupported(node, "module is in training mode")
    return args[0]


def pass_through_function(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Dropout and stochastic-depth functions are the identity when called with ``training=False``."""
    position = rules.PASSTHROUGH_FUNCTIONS[node.target]
    if kwargs.get("training", args[position] if len(args) > position else True):
        raise converter.unsupported(node, "called with training=True")
    return args[0]


def pass_through_method(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Tensor methods that keep every value where it is (``contiguous``): same pair, copied call."""
    return replace(args[0], value=_before_padding(converter, node, args[0]))


def read_metadata(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Node:
    """``x.size()``, ``x.dim()`` of a spatial activation: reading metadata touches no values (padding included)."""
    return converter.copy_on(node)


def read_attribute(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Node:
    """``x.shape``, ``x.dtype``, … of a spatial activation (other attributes are unsupported)."""
    converter.spatial_input(node, args)
    if args[1] not in rules.METADATA_ATTRIBUTES:
        raise converter.unsupported(node)
    return converter.copy_on(node)


def add_sub(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Residual rule: ``((a1 ± a2) ⊙ m1 ⊙ m2, m1 ⊙ m2)``; adding a constant is a pointwise ``f(0) != 0``."""
    left, right = args[0], args[1]
    if isinstance(left, Spatial) and isinstance(right, Spatial):
        left, right = converter.materialise(left), converter.materialise(right)
        value = converter.copy_on(node)
        if left.mask is right.mask:
            return Spatial(value, left.mask)
        mask = converter.plan.product(left.mask, right.mask)
        return Spatial(converter.graph.call_function(apply_mask, (value, mask)), mask)
    spatial = left if isinstance(left, Spatial) else right
    return converter.remasked(spatial, converter.copy_on(node))


def mul_div(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Multiply rule: scaling by a non-spatial tensor (squeeze-excitation) keeps the mask; so does a product
    of two spatial activations with the same mask. Dividing by a spatial activation is refused."""
    left, right = args[0], args[1]
    if isinstance(left, Spatial) and isinstance(right, Spatial):
        if converter.materialise(left).mask is not converter.materialise(right).mask:
            raise converter.unsupported(node, "product of two spatial activations with different masks")
        return Spatial(converter.copy_on(node), converter.materialise(left).mask)
    if isinstance(right, Spatial) and node.target in rules.DIVISIONS:
        raise converter.unsupported(node, "division by a spatial activation")
    spatial = left if isinstance(left, Spatial) else right
    return Spatial(converter.copy_on(node), converter.materialise(spatial).mask)


def cat(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Concatenation rule, along channels only: mask ``m1 ⊙ m2 ⊙ …``, output re-masked."""
    tensors = kwargs.get("tensors", args[0])
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    if not all(isinstance(t, Spatial) for t in tensors):
        raise converter.unsupported(node, "concatenation of spatial and non-spatial tensors")
    if dim not in (1, -3):
        raise converter.unsupported(node, f"concatenation along dim {dim}; only channels (dim 1) are supported")
    parts = [converter.materialise(t) for t in tensors]
    mask = converter.plan.product(*(p.mask for p in parts))
    value = converter.copy_on(node)
    non_negative = all(p.non_negative for p in parts)
    if all(p.mask is mask for p in parts):
        return Spatial(value, mask, None, non_negative)
    return Spatial(converter.graph.call_function(apply_mask, (value, mask)), mask, None, non_negative)


def zero_pad_module(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Padding-module rule for ``nn.ZeroPad2d`` (see :func:`_pad`)."""
    module = converter.module_of(node)
    assert isinstance(module, nn.ZeroPad2d)
    return _pad(converter, node, args[0], tuple(module.padding))


def pad_function(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spatial:
    """Padding rule for ``F.pad`` with constant zero padding (other modes and values are refused)."""
    x = converter.spatial_input(node, args)
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    if mode != "constant" or value not in (None, 0, 0.0):
        raise converter.unsupported(node, "only zero padding is supported")
    return _pad(converter, node, x, tuple(kwargs.get("pad", args[1] if len(args) > 1 else ())))


def _pad(converter: Converter, node: fx.Node, x: Spatial, pad: tuple[int, ...]) -> Spatial:
    """Explicit zero padding is neither visible nor filled: it stays pending on the pair until a consumer
    applies it, a convolution as its own zero padding."""
    if len(pad) != 4:
        raise converter.unsupported(node, f"padding {pad} is not a 2-D (left, right, top, bottom) padding")
    new = (int(pad[0]), int(pad[1]), int(pad[2]), int(pad[3]))
    return replace(x, pre_pad=new if x.pre_pad is None else add_pads(x.pre_pad, new))


def flatten(converter: Converter, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Node:
    """Flatten rule (module, ``torch.flatten``/``reshape``, ``Tensor.flatten``/``view``/``reshape``): flatten
    ``a ⊙ m`` (with its padding); the mask ends here."""
    x = converter.spatial_input(node, args)
    return converter.call_module(node, x) if node.op == "call_module" else converter.copy_on(node)
