"""ONNX export of the layer-masked models and ONNX Runtime (CPU) parity with PyTorch."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from skimage import data

import layermask
from layermask.onnx.export import MASKING_SPEC_VERSION, export_onnx
from layermask.onnx.runtime import OnnxMaskedModel, choose_providers, load_onnx_model
from layermask_service.client import ExplainClient, explain_request
from layermask_service.settings import Settings
from tests.helpers.networks import ALL_ARCHITECTURES, ConvertedNetworks, SeededNetworks, UpsamplingNet, images_and_masks
from tests.helpers.service import RunningServer, png_bytes

# float16 export: weights and compute in half precision behind float32 I/O. Stated tolerance:
FP16_RELATIVE_TOLERANCE = 5e-2   # max |logit difference| ≤ 5 % of max |logit|
FP16_TOP1_AGREEMENT = 0.9        # top-1 equal to float32 PyTorch on ≥ 90 % of masks


Exported = Callable[..., OnnxMaskedModel]


@pytest.fixture(scope="module")
def exported(seeded_network: SeededNetworks, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """``exported(name, fp16=False)``: the layer-masked ONNX export of a test network, built once per module."""
    directory = tmp_path_factory.mktemp("onnx")

    @functools.cache
    def export(name: str, fp16: bool = False) -> OnnxMaskedModel:
        loaded = layermask.load_model(name) if name == "efficientnet_lite0" else \
            layermask.LoadedModel(name, seeded_network(name), layermask.Preprocessing())
        path = export_onnx(loaded, directory / f"{name}{'-fp16' if fp16 else ''}.onnx", fp16=fp16)
        return OnnxMaskedModel(path, ["CPUExecutionProvider"])

    return export


def random_masks(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cells = (torch.rand(count, 1, 14, 14, generator=generator) < 0.5).float()
    return cells.repeat_interleave(16, 2).repeat_interleave(16, 3)


def test_export_has_the_promised_interface_and_metadata(default_model: layermask.LoadedModel,
                                                        exported: Exported) -> None:
    model = onnx.load(exported("efficientnet_lite0").path)
    onnx.checker.check_model(model)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs == {"image": ["batch", 3, 224, 224], "mask": ["batch", 1, 224, 224]}
    assert [o.name for o in model.graph.output] == ["logits"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["layermask.model"] == "efficientnet_lite0"
    assert meta["layermask.masking_spec_version"] == MASKING_SPEC_VERSION
    assert json.loads(meta["layermask.class_names"])[967] == "espresso"
    assert json.loads(meta["layermask.preprocessing"]) == {"input_size": [224, 224], "resize_size": 256,
                                                           "mean": [0.5] * 3, "std": [0.5] * 3,
                                                           "interpolation": "bicubic"}


def compare(converted: ConvertedNetworks, name: str, runtime: OnnxMaskedModel, count: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of PyTorch and ONNX Runtime for one image under ``count`` random masks (the first
    two fully visible and fully hidden)."""
    images, _ = images_and_masks(1, seed=seed)
    masks = random_masks(count, seed=seed + 1)
    masks[0] = 1.0
    masks[1] = 0.0
    with torch.inference_mode():
        expected = torch.cat([converted(name)(images, masks[i : i + 16]) for i in range(0, count, 16)])
        out = torch.cat([runtime(images, masks[i : i + 16]) for i in range(0, count, 16)])
    return out, expected


# 64 masks on the default model and ResNet-50, 8 on the others to keep the suite's time in check.
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_ARCHITECTURES)
def test_onnx_runtime_matches_pytorch(name: str, exported: Exported, converted: ConvertedNetworks) -> None:
    count = 64 if name in ("efficientnet_lite0", "resnet50") else 8
    out, expected = compare(converted, name, exported(name), count, seed=21)
    assert (out - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
    assert torch.equal(out.argmax(dim=1), expected.argmax(dim=1))  # top-1 agreement on every mask


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
@torch.inference_mode()
def test_exact_invariance_holds_in_onnx_runtime(name: str, exported: Exported) -> None:
    images, masks = images_and_masks(2, seed=23)
    runtime = exported(name)
    reference = runtime(images * masks, masks)
    for content in (torch.zeros_like(images), 10 * torch.randn_like(images)):
        assert (runtime(images * masks + content * (1 - masks), masks) - reference).abs().max().item() <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_fp16_export_within_the_stated_tolerance(name: str, exported: Exported,
                                                 converted: ConvertedNetworks) -> None:
    out, expected = compare(converted, name, exported(name, fp16=True), 64, seed=24)
    assert (out - expected).abs().max().item() <= FP16_RELATIVE_TOLERANCE * expected.abs().max().item()
    assert (out.argmax(dim=1) == expected.argmax(dim=1)).float().mean().item() >= FP16_TOP1_AGREEMENT
    assert (out - expected).abs().max().item() > 0  # it really ran in half precision


def test_unconvertible_model_fails_with_the_engines_error(tmp_path: Path) -> None:
    model = layermask.LoadedModel("upsampler", UpsamplingNet().eval(), layermask.Preprocessing(), ["a", "b"])
    with pytest.raises(layermask.UnsupportedLayerError, match="Upsample"):
        export_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_export_cli(tmp_path: Path) -> None:
    out = tmp_path / "lite0.onnx"
    result = subprocess.run([sys.executable, "-m", "layermask", "export-onnx", "-o", str(out)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert load_onnx_model(out).name == "efficientnet_lite0"
    bad = subprocess.run([sys.executable, "-m", "layermask", "export-onnx", "--model", "resnet50", "-o",
                          str(tmp_path / "r.onnx")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "needs a local weights file" in bad.stderr and "Traceback" not in bad.stderr


def test_execution_providers_are_chosen_in_order(exported: Exported) -> None:
    assert choose_providers()[-1] == "CPUExecutionProvider"
    assert exported("efficientnet_lite0").provider in choose_providers()
    with pytest.raises(ValueError, match="unknown execution provider"):
        choose_providers(["MadeUpExecutionProvider"])


def test_every_strategy_and_lime_run_on_the_onnx_model(exported: Exported) -> None:
    onnx_model = load_onnx_model(exported("efficientnet_lite0").path)
    torch_model = layermask.load_model()
    images, masks = images_and_masks(2, seed=26)
    for name in layermask.MASKING_STRATEGIES:
        out = layermask.get_masker(name, onnx_model)(images, masks)
        expected = layermask.get_masker(name, torch_model)(images, masks)
        assert (out - expected).abs().max().item() <= 1e-4 * expected.abs().max().item(), name
    a = layermask.explain(onnx_model, data.coffee(), segmentation="slic", num_samples=48, seed=1)
    b = layermask.explain(torch_model, data.coffee(), segmentation="slic", num_samples=48, seed=1)
    assert a.labels == b.labels == [967]
    assert np.allclose(a.explanations[967].weights, b.explanations[967].weights, atol=1e-4)


@pytest.fixture(scope="module")
def onnx_server() -> Iterator[RunningServer]:
    running = RunningServer(Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                     format="onnx"))
    yield running
    running.stop()


def test_embedded_backend_serves_the_onnx_model(onnx_server: RunningServer,
                                                default_model: layermask.LoadedModel) -> None:
    image = png_bytes(data.chelsea())
    with ExplainClient(onnx_server.target, timeout=120) as client:
        response = client.explain(explain_request(image, segmentation="grid", num_samples=32, seed=4))
    local = layermask.explain(default_model, data.chelsea(), segmentation="grid", num_samples=32, seed=4)
    label = local.labels[0]
    assert response.explanations[0].label == label
    assert np.allclose(response.explanations[0].weights, local.explanations[label].weights, atol=1e-4)
    metrics = onnx_server.scrape()
    assert metrics[("layermask_model_load_seconds", (("format", "onnx"), ("model", "efficientnet_lite0"),
                                                     ("provider", "CPUExecutionProvider")))] > 0
