"""Devices: the one reading of device names, TorchServe's choice of device, ONNX Runtime's provider
options, and the layer-masked model, its masks and its batches on the model's device.

Where CUDA is absent, the CUDA paths are checked through what each configuration resolves to; the
``gpu``-marked tests run them where CUDA is present (they are skipped elsewhere).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import layermask
from layermask.devices import module_device, resolve_device, torchserve_device
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.masking.strategies import cached_masker
from layermask.onnx.runtime import PREFERRED_PROVIDERS, provider_options
from tests.helpers.networks import images_and_masks

CPU = torch.device("cpu")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")


def test_cpu_resolves_to_the_cpu() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device(torch.device("cpu")) == CPU


@pytest.mark.parametrize("spec", ["gpu", "CPU", "Cuda", "cuda:", "cuda:-1", "cuda:x", "cuda:01", "cuda:0:1",
                                  "cpu:0", " cuda", "cuda ", "", "0", "mps"])
def test_other_spellings_are_refused_naming_the_setting(spec: str) -> None:
    with pytest.raises(ValueError) as error:
        resolve_device(spec)
    assert str(error.value) == f"device: expected 'cpu', 'cuda' or 'cuda:N', got {spec!r}"


@without_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1", "cuda:12"])
def test_cuda_is_well_formed_but_refused_where_absent(spec: str) -> None:
    with pytest.raises(ValueError) as error:
        resolve_device(spec)
    assert str(error.value) == (f"device: {spec!r} requested but CUDA is not available "
                                "(torch.cuda.is_available() is False)")


@pytest.mark.parametrize(("gpu_id", "cuda_available", "expected"), [
    (3, True, "cuda:3"), ("1", True, "cuda:1"), (0, True, "cuda:0"),
    (3, False, "cpu"), (None, True, "cpu"), (None, False, "cpu"),
])
def test_a_torchserve_worker_runs_where_the_base_handler_would(gpu_id: int | str | None, cuda_available: bool,
                                                               expected: str) -> None:
    assert torchserve_device(gpu_id, cuda_available) == torch.device(expected)


def test_onnx_gpu_providers_get_the_device_id_and_the_cpu_provider_nothing() -> None:
    assert provider_options(PREFERRED_PROVIDERS, 3) == [
        ("TensorrtExecutionProvider", {"device_id": "3"}),
        ("CUDAExecutionProvider", {"device_id": "3"}),
        ("CPUExecutionProvider", {}),
    ]
    assert provider_options(PREFERRED_PROVIDERS) == [(name, {}) for name in PREFERRED_PROVIDERS]
    assert provider_options(["CPUExecutionProvider", "CUDAExecutionProvider"], "0") == [
        ("CPUExecutionProvider", {}), ("CUDAExecutionProvider", {"device_id": "0"})]


def test_a_module_is_where_its_first_tensor_is() -> None:
    assert module_device(nn.Linear(2, 2)) == CPU
    assert module_device(nn.ReLU()) == CPU  # nothing to place: the CPU


def test_a_loaded_model_reports_its_device_and_moves_in_place(default_model: layermask.LoadedModel) -> None:
    assert default_model.device == CPU
    assert default_model.to("cpu") is default_model
    network = default_model.torch_network()
    assert {t.device for t in [*network.parameters(), *network.buffers()]} == {CPU}


def test_a_runtime_graph_runs_on_the_cpu_side_only() -> None:
    graph = layermask.LoadedModel("graph", None, layermask.Preprocessing(),
                                  masked_runtime=lambda images, masks: images.sum((1, 2, 3))[:, None])
    assert graph.device == CPU and graph.to("cpu") is graph
    with pytest.raises(ValueError, match="execution providers choose its device"):
        graph.to("cuda:0")


# ------------------------------------------------------------------ CUDA


@pytest.mark.gpu
def test_an_index_past_the_visible_devices_is_refused() -> None:
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=rf"^device: 'cuda:{count}' requested but only {count} CUDA device"):
        resolve_device(f"cuda:{count}")


@pytest.mark.gpu
def test_the_layer_masked_lite0_on_cuda_matches_the_cpu(default_model: layermask.LoadedModel,
                                                        exact_cuda: None) -> None:
    on_cuda = layermask.load_model("efficientnet_lite0").to("cuda")
    assert on_cuda.device.type == "cuda"
    images, masks = images_and_masks(8, seed=3)
    expected = cached_masker("layer", default_model)(images, masks)
    logits = cached_masker("layer", on_cuda)(images.cuda(), masks.cuda())
    assert logits.device.type == "cuda"
    difference = (logits.cpu() - expected).abs().max().item()
    assert difference <= 1e-3 * expected.abs().max().item()
    assert torch.equal(logits.cpu().argmax(1), expected.argmax(1))


@pytest.mark.gpu
def test_every_strategy_scores_on_cuda_as_on_the_cpu(default_model: layermask.LoadedModel, exact_cuda: None) -> None:
    on_cuda = layermask.load_model("efficientnet_lite0").to("cuda")
    rng = np.random.default_rng(0)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    segments = np.arange(224 * 224).reshape(224, 224) // -(-224 * 224 // 10)
    jobs = [ScoringJob(image, masking, segments=segments, rows=rng.integers(0, 2, (6, 10), dtype=np.uint8),
                       labels=(1, 2, 3)) for masking in layermask.MASKING_STRATEGIES]
    jobs.append(ScoringJob(image, "layer", masks=rng.integers(0, 2, (5, 224, 224), dtype=np.uint8)))
    for got, expected in zip(score_jobs(on_cuda, jobs, 8), score_jobs(default_model, jobs, 8)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_a_masker_converted_before_a_move_is_not_reused() -> None:
    model = layermask.load_model("efficientnet_lite0")
    on_cpu = cached_masker("layer", model)
    on_cuda = cached_masker("layer", model.to("cuda"))
    assert on_cuda is not on_cpu
    images, masks = images_and_masks(2, seed=5)
    assert on_cuda(images.cuda(), masks.cuda()).device.type == "cuda"
