"""oneDNN's fused convolution + activation on the CPU, probed once at import.

``torch.ops.mkldnn._convolution_pointwise`` runs a convolution with a ReLU or hardtanh applied as a
post-op, which saves a full pass over the feature map. It is a private op: it may be missing, or
behave differently, in another torch build. So it is tried once, on tiny tensors against
``F.conv2d`` + the activation; where it is missing, fails or disagrees,
:func:`fused_conv_available` is False and every caller takes the separate ops.

The probe runs on first use, not at import: a oneDNN call on the importing thread before the
compute threads exist made the service's compute threads page-fault their activation buffers
anew on every pass (8x the minor faults, 25 % slower explanations; docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from layermask.transform._kernel_choice import use_portable_kernels

Activation = tuple[str, tuple[float, ...]]
"""An activation as oneDNN names its post-ops: ``("relu", ())`` or ``("hardtanh", (low, high))``."""

_PROBE_TOLERANCE = 1e-5


def _probe() -> bool:
    """Whether the fused op exists here and matches ``F.conv2d`` + the activation on a 1×2×4×4 input."""
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(1, 2, 4, 4, generator=generator).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(3, 2, 3, 3, generator=generator), torch.randn(3, generator=generator)
    expected = F.conv2d(a, weight, bias, 1, 1)
    try:
        for activation, reference in ((("relu", ()), F.relu(expected)),
                                      (("hardtanh", (-0.5, 0.5)), F.hardtanh(expected, -0.5, 0.5))):
            fused = _call(a, weight, bias, (1, 1), (1, 1), (1, 1), 1, activation)
            if fused.shape != reference.shape or not torch.allclose(fused, reference, rtol=0, atol=_PROBE_TOLERANCE):
                return False
    except Exception:  # any failure of a private op (missing, wrong signature, unsupported) means "not here"
        return False
    return True


def _call(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
          padding: tuple[int, int], dilation: tuple[int, int], groups: int, activation: Activation) -> torch.Tensor:
    name, scalars = activation
    return torch.ops.mkldnn._convolution_pointwise(a, weight, bias, list(padding), list(stride), list(dilation),
                                                   groups, name, list(scalars), "")


@functools.cache
def fused_conv_available() -> bool:
    """Whether this torch build has a working fused oneDNN convolution + activation (probed once, on first use)."""
    return _probe()

_separate_ops_forced: contextvars.ContextVar[bool] = contextvars.ContextVar("layermask_separate_conv_ops",
                                                                            default=False)


@contextlib.contextmanager
def separate_conv_ops() -> Iterator[None]:
    """Within this block (in this thread or task), convolutions and their activations run as separate ops."""
    token = _separate_ops_forced.set(True)
    try:
        yield
    finally:
        _separate_ops_forced.reset(token)


def available_for(a: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int] | str) -> bool:
    """Whether the fused op can run on these operands now: float32 on the CPU, numeric padding, eager
    kernels (not the ONNX export) and not inside :func:`separate_conv_ops`."""
    return (a.device.type == "cpu" and a.dtype == weight.dtype == torch.float32
            and not isinstance(padding, str) and not _separate_ops_forced.get() and not use_portable_kernels()
            and fused_conv_available())


def fused_conv2d(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int] | str, dilation: tuple[int, int], groups: int,
                 activation: Activation) -> torch.Tensor | None:
    """``activation(conv2d(a))`` in one oneDNN call, or None where :func:`available_for` says it cannot run."""
    if not available_for(a, weight, padding):
        return None
    assert not isinstance(padding, str)
    return _call(a, weight, bias, stride, padding, dilation, groups, activation)
