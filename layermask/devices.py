"""Devices: the one reading of a device name (``cpu``, ``cuda``, ``cuda:N``), and where a model lives.

A layer-masked model, the masks built for it and the batches it scores all live on the device of
its network (:func:`module_device`); only class probabilities come back to the CPU.

Only the CPU has been measured in this project's CI. The CUDA paths are tested on the CPU by
checking which device each configuration resolves to, and by the ``gpu``-marked tests, which run
where CUDA is present; ``bench/gpu_check.sh`` measures them on a lent GPU.
"""

from __future__ import annotations

import itertools
import re

import torch
from torch import nn

__all__ = ["DEVICE_NAMES", "module_device", "resolve_device", "torchserve_device"]

DEVICE_NAMES = "'cpu', 'cuda' or 'cuda:N'"
_DEVICE_SYNTAX = re.compile(r"cpu|cuda(?::(?P<index>0|[1-9][0-9]*))?")


def resolve_device(spec: str | torch.device) -> torch.device:
    """``spec`` (``cpu``, ``cuda`` or ``cuda:N``) as a device this process can use.

    Raises ``ValueError`` naming ``device`` for any other spelling, for CUDA when this process has
    none, and for a CUDA index past the visible devices. Checking availability does not create a
    CUDA context.
    """
    text = str(spec)
    match = _DEVICE_SYNTAX.fullmatch(text)
    if match is None:
        raise ValueError(f"device: expected {DEVICE_NAMES}, got {text!r}")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {text!r} requested but CUDA is not available (torch.cuda.is_available() is False)")
    count = torch.cuda.device_count()
    if match["index"] is not None and int(match["index"]) >= count:
        raise ValueError(f"device: {text!r} requested but only {count} CUDA device(s) are visible "
                         f"(cuda:0 to cuda:{count - 1})")
    return torch.device(text)


def torchserve_device(gpu_id: int | str | None, cuda_available: bool) -> torch.device:
    """The device of a TorchServe worker, chosen as TorchServe's base handler chooses it:
    ``cuda:<gpu_id>`` when TorchServe assigned the worker a GPU and CUDA is available, else the CPU.

    Unmeasured: no TorchServe with a GPU has run this project; the choice is tested on both branches.
    """
    if gpu_id is None or not cuda_available:
        return torch.device("cpu")
    return torch.device("cuda", int(gpu_id))


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer; the CPU for a module with neither."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")
