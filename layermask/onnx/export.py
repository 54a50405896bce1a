"""Exporting the layer-masked model to ONNX: inputs ``image`` (N×3×H×W) and ``mask`` (N×1×H×W),
output ``logits``, dynamic batch, with the model's metadata in ``metadata_props``."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import onnx
import torch
from torch import nn

import layermask
from layermask.models.registry import LoadedModel
from layermask.transform import layer_mask

__all__ = ["DEFAULT_OPSET", "MASKING_SPEC_VERSION", "export_onnx"]

DEFAULT_OPSET = 17
# Bumped when the semantics of layer-masking-spec.md that the exported graph implements change.
MASKING_SPEC_VERSION = "1"


class _Float16Boundary(nn.Module):
    """Runs a half-precision graph behind float32 inputs and outputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner).half()  # the converted graph shares the caller's parameters

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inner(image.half(), mask.half()).float()


def metadata(model: LoadedModel, fp16: bool) -> dict[str, str]:
    return {
        "layermask.model": model.name,
        "layermask.version": layermask.__version__,
        "layermask.masking_spec_version": MASKING_SPEC_VERSION,
        "layermask.precision": "float16" if fp16 else "float32",
        "layermask.class_names": json.dumps(model.class_names),
        "layermask.preprocessing": json.dumps(model.preprocessing.to_dict()),
    }


def export_onnx(model: LoadedModel, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET,
                fp16: bool = False) -> Path:
    """Write ``model``'s layer-masked network to ``path`` as ONNX and check it.

    An unconvertible network raises :class:`~layermask.UnsupportedLayerError` before the exporter
    runs. ``fp16`` stores weights and computes in float16 behind float32 inputs and outputs.
    """
    if not 13 <= opset <= 21:
        raise ValueError(f"opset must be between 13 and 21, got {opset}")
    graph: nn.Module = layer_mask(model.torch_network()).graph_module
    if fp16:
        graph = _Float16Boundary(graph)
    height, width = model.input_size
    example = (torch.zeros(2, 3, height, width), torch.ones(2, 1, height, width))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(graph, example, str(out), input_names=["image", "mask"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    proto = onnx.load(str(out))
    for key, value in metadata(model, fp16).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out
