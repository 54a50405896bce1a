"""Which operations layer masking can carry a mask through, and how; helpers to read their arguments.

This module only classifies: :mod:`layermask.transform._dispatch` maps each class of operation to
the emitter that applies its rule, and :mod:`layermask.transform._fill_pruning` reads it too. The
classification follows ``layer-masking-spec.md``: anything not listed here (or given a rule of its
own in the dispatch tables) that touches a spatial activation is refused at conversion time.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

# Pointwise activations with f(0) == 0: hidden positions stay 0 without re-masking.
ZERO_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Mish, nn.PReLU,
)
ZERO_PRESERVING_FUNCTIONS: set[Any] = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu,
    F.elu, torch.tanh, F.mish,
}
ZERO_PRESERVING_METHODS = {"relu", "relu_", "tanh", "tanh_"}

# Pointwise activations with f(0) != 0: the output is re-masked.
REMASKED_MODULES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
REMASKED_FUNCTIONS: set[Any] = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus}
REMASKED_METHODS = {"sigmoid", "sigmoid_"}

# Activations whose output is never negative: a max-pool after them needs no -inf masking.
NON_NEGATIVE_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
NON_NEGATIVE_FUNCTIONS: set[Any] = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus,
}
NON_NEGATIVE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_"}

# Operations that are the identity in eval mode (dropout modules are refused in training mode).
DROPOUT_MODULES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout)
PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, *DROPOUT_MODULES)
# Functions that are the identity when their ``training`` argument (at this position) is False.
PASSTHROUGH_FUNCTIONS: dict[Any, int] = {F.dropout: 2, F.dropout2d: 2, F.alpha_dropout: 2, stochastic_depth: 3}
PASSTHROUGH_METHODS = {"contiguous"}

ADD_SUB = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
ADD_SUB_METHODS = {"add", "add_", "sub", "sub_"}
MUL_DIV = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
MUL_DIV_METHODS = {"mul", "mul_", "div", "div_"}
DIVISIONS: set[Any] = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}

FLATTEN_FUNCTIONS: set[Any] = {torch.flatten, torch.reshape}
FLATTEN_METHODS = {"flatten", "view", "reshape"}
# Reading metadata of a spatial activation touches no values.
METADATA_METHODS = {"size", "dim"}
METADATA_ATTRIBUTES = {"shape", "dtype", "device", "ndim"}

GLOBAL_MEAN_METHODS = {"mean"}


def is_non_negative(op: Any) -> bool:
    """Whether activation ``op`` (a module, a function or a tensor-method name) never outputs a negative value."""
    if isinstance(op, nn.Module):
        return isinstance(op, NON_NEGATIVE_MODULES) or (isinstance(op, nn.Hardtanh) and op.min_val >= 0)
    return op in NON_NEGATIVE_FUNCTIONS or op in NON_NEGATIVE_METHODS


def is_zero_preserving_hardtanh(low: float, high: float) -> bool:
    """Whether ``hardtanh(0) == 0`` with these bounds."""
    return low <= 0.0 <= high


def is_eval_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d) and not module.training


def pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """Normalise an int-or-pair hyper-parameter to a pair."""
    if isinstance(value, int):
        return (value, value)
    values = tuple(value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def bind(names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments by parameter name, from ``args`` in the order of ``names`` and ``kwargs``."""
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def is_global_output_size(output_size: Any) -> bool:
    return output_size == 1 or tuple(pair(output_size)) == (1, 1)
