"""ONNX export of layer-masked models, and running them with ONNX Runtime."""

from layermask.onnx.export import MASKING_SPEC_VERSION, export_onnx
from layermask.onnx.runtime import OnnxMaskedModel, load_onnx_model

__all__ = ["MASKING_SPEC_VERSION", "OnnxMaskedModel", "export_onnx", "load_onnx_model"]
