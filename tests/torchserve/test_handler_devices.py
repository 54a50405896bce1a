"""The TorchServe handler's device, from the GPU TorchServe assigns a worker (``gpu_id``), driven
in-process through TorchServe's own Context.

No GPU TorchServe has run this project: the PyTorch worker's device is checked here where CUDA is
absent (the CPU, whatever the ``gpu_id``) and under ``gpu`` where it is present; the ONNX worker's
GPU is checked by inspecting the provider options handed to ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

import layermask
from layermask.onnx.export import export_onnx
from layermask.onnx.runtime import OnnxMaskedModel, choose_providers
from layermask_service.torchserve.archive import ArchiveSettings, model_config
from layermask_service.torchserve.handler import LayerMaskHandler
from layermask_service.torchserve.resources import METRICS, copy_resource
from tests.helpers.networks import SeededNetworks

ONNX_MODEL = "squeezenet1_1"  # small and quick to export; the handler takes any exported model


def _initialized(model: str, fmt: str, model_dir: Path, serialized: str | None, gpu_id: int | None) -> LayerMaskHandler:
    metrics = MetricsCacheYamlImpl(str(copy_resource(METRICS, model_dir)))
    metrics.initialize_cache()
    manifest = {"model": {"serializedFile": serialized} if serialized else {}}
    context = Context(model, str(model_dir), manifest, 8, gpu_id, "0.12.0", metrics=metrics,
                      model_yaml_config=model_config(model, fmt, ArchiveSettings()))
    handler = LayerMaskHandler()
    handler.initialize(context)
    return handler


@pytest.fixture(scope="module")
def onnx_dir(seeded_network: SeededNetworks, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("onnx-archive")
    export_onnx(layermask.LoadedModel(ONNX_MODEL, seeded_network(ONNX_MODEL), layermask.Preprocessing()),
                directory / f"{ONNX_MODEL}.onnx")
    return directory


@pytest.mark.parametrize(("gpu_id", "gpu_options"), [(3, {"device_id": "3"}), (None, {})])
def test_an_onnx_worker_hands_its_gpu_to_the_gpu_providers(onnx_dir: Path, gpu_id: int | None,
                                                           gpu_options: dict[str, str]) -> None:
    handler = _initialized(ONNX_MODEL, "onnx", onnx_dir, f"{ONNX_MODEL}.onnx", gpu_id)
    assert handler.model is not None
    runtime = handler.model.masked_runtime
    assert isinstance(runtime, OnnxMaskedModel)
    assert runtime.provider_options == [("TensorrtExecutionProvider", gpu_options),
                                        ("CUDAExecutionProvider", gpu_options),
                                        ("CPUExecutionProvider", {})]
    # The session was given those of them this onnxruntime build offers, in order.
    assert runtime.session.get_providers() == choose_providers()
    assert handler.model.device == torch.device("cpu")  # ONNX Runtime takes CPU tensors and places them itself


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback where CUDA is absent")
def test_a_torch_worker_given_a_gpu_runs_on_the_cpu_without_cuda(tmp_path: Path) -> None:
    handler = _initialized("efficientnet_lite0", "torch", tmp_path, None, gpu_id=0)
    assert handler.model is not None and handler.model.device == torch.device("cpu")


@pytest.mark.gpu
def test_a_torch_worker_runs_on_the_gpu_torchserve_assigned(tmp_path: Path) -> None:
    gpu_id = torch.cuda.device_count() - 1
    handler = _initialized("efficientnet_lite0", "torch", tmp_path, None, gpu_id=gpu_id)
    assert handler.model is not None and handler.model.device == torch.device("cuda", gpu_id)
    without_gpu = _initialized("efficientnet_lite0", "torch", tmp_path / "cpu", None, gpu_id=None)
    assert without_gpu.model is not None and without_gpu.model.device == torch.device("cpu")
