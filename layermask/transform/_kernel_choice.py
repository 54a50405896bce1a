"""The one switch between the eager CPU-optimised kernels and the portable forms the ONNX exporter can trace.

Eager (every ordinary call): the band-only neighbour fill, mask neighbour sums by shifted additions,
zeroing only the border when padding, ``out=`` forms that reuse buffers, and oneDNN's fused
convolution + activation. Portable (while ``torch.onnx.export`` traces the graph): the dense
depthwise fill, neighbour sums by convolution, ``F.pad``, no ``out=``, and the convolution and its
activation as separate ops: forms the exporter can trace and whose output shapes it can infer.
Both compute the same values.
"""

from __future__ import annotations

import torch


def use_portable_kernels() -> bool:
    """Whether the current call must use the portable forms: exactly while the ONNX exporter traces."""
    return torch.onnx.is_in_onnx_export()
