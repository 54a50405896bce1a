"""Which emitter converts each operation on a spatial activation: lookup tables by module type, by
function and by tensor-method name.

Every emitter has one signature, :data:`Rule`: it gets the converter, the original node and the
node's arguments with original nodes replaced by their new values (a
:class:`~layermask.transform._spatial.Spatial` for each spatial activation), and returns the node's
new value. An op with no entry has no layer-masking rule and is refused; so is an op whose emitter
finds its arguments outside its rule (e.g. a Hardtanh whose bounds exclude 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from layermask.transform import _emit_conv as conv
from layermask.transform import _emit_elementwise as elementwise
from layermask.transform import _emit_pool as pool
from layermask.transform import _rules as rules

if TYPE_CHECKING:
    import torch.fx as fx

    from layermask.transform._converter import Converter

Rule = Callable[["Converter", "fx.Node", tuple[Any, ...], dict[str, Any]], Any]
"""``rule(converter, node, args, kwargs) -> new value`` (see the module docstring)."""

_Key = TypeVar("_Key")


def _table(*groups: Mapping[_Key, Rule]) -> dict[_Key, Rule]:
    """Merge ``groups`` into one table; an op given two rules is a mistake in the tables."""
    table: dict[_Key, Rule] = {}
    for group in groups:
        for key, rule in group.items():
            if key in table:
                raise AssertionError(f"two layer-masking rules for {key!r}")
            table[key] = rule
    return table


def _each(keys: Iterable[_Key], rule: Rule) -> dict[_Key, Rule]:
    return dict.fromkeys(keys, rule)


MODULE_RULES: dict[type[nn.Module], Rule] = _table(
    {nn.Conv2d: conv.conv_module, nn.BatchNorm2d: conv.batch_norm},
    _each(rules.ZERO_PRESERVING_MODULES, elementwise.zero_preserving),
    {nn.Hardtanh: elementwise.hardtanh_module},
    _each(rules.REMASKED_MODULES, elementwise.remasked),
    {nn.Identity: elementwise.identity},
    _each(rules.DROPOUT_MODULES, elementwise.dropout_module),
    {nn.ZeroPad2d: elementwise.zero_pad_module, nn.Flatten: elementwise.flatten},
    {nn.MaxPool2d: pool.max_pool_module, nn.AvgPool2d: pool.avg_pool_module,
     nn.AdaptiveAvgPool2d: pool.adaptive_avg_pool_module},
)
"""Rules by module class; :func:`module_rule` also finds a subclass's rule through its base classes."""

FUNCTION_RULES: dict[Any, Rule] = _table(
    {F.conv2d: conv.conv_function},
    _each(rules.ZERO_PRESERVING_FUNCTIONS, elementwise.zero_preserving),
    {F.hardtanh: elementwise.hardtanh_function},
    _each(rules.REMASKED_FUNCTIONS, elementwise.remasked),
    _each(rules.PASSTHROUGH_FUNCTIONS, elementwise.pass_through_function),
    _each(rules.ADD_SUB, elementwise.add_sub),
    _each(rules.MUL_DIV, elementwise.mul_div),
    {torch.cat: elementwise.cat, F.pad: elementwise.pad_function, getattr: elementwise.read_attribute},
    _each(rules.FLATTEN_FUNCTIONS, elementwise.flatten),
    {F.max_pool2d: pool.max_pool_function, F.avg_pool2d: pool.avg_pool_function,
     F.adaptive_avg_pool2d: pool.adaptive_avg_pool_function, torch.mean: pool.global_mean},
)
"""Rules by the function a ``call_function`` node calls."""

METHOD_RULES: dict[str, Rule] = _table(
    _each(rules.ZERO_PRESERVING_METHODS, elementwise.zero_preserving),
    _each(rules.REMASKED_METHODS, elementwise.remasked),
    _each(rules.PASSTHROUGH_METHODS, elementwise.pass_through_method),
    _each(rules.METADATA_METHODS, elementwise.read_metadata),
    _each(rules.ADD_SUB_METHODS, elementwise.add_sub),
    _each(rules.MUL_DIV_METHODS, elementwise.mul_div),
    _each(rules.FLATTEN_METHODS, elementwise.flatten),
    _each(rules.GLOBAL_MEAN_METHODS, pool.global_mean),
)
"""Rules by the name of the tensor method a ``call_method`` node calls on a spatial activation."""


def module_rule(module: nn.Module) -> Rule | None:
    """The rule for ``module``'s class or, failing that, for its nearest base class that has one."""
    for cls in type(module).__mro__:
        rule = MODULE_RULES.get(cls)
        if rule is not None:
            return rule
    return None
