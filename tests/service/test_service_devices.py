"""The ``device`` setting: read like every setting, validated once when Settings are built, and the
embedded backend's models on it.

Where CUDA is absent, a CUDA device must be refused with a clear message (and in one line by
``layermask serve``); the ``gpu``-marked test explains on CUDA where it is present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

import layermask
from layermask.masking.strategies import cached_masker
from layermask.onnx.runtime import PREFERRED_PROVIDERS
from layermask_service.cli import main
from layermask_service.client import ExplainClient, explain_request
from layermask_service.settings import Settings, load_settings
from tests.helpers.service import RunningServer, png_bytes

CUDA_ABSENT = "requested but CUDA is not available (torch.cuda.is_available() is False)"
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")


def test_the_device_defaults_to_the_cpu_and_the_providers_to_the_core_s_list() -> None:
    settings = load_settings(environ={})
    assert settings.device == "cpu"
    assert settings.onnx_providers == PREFERRED_PROVIDERS


def test_the_device_comes_from_file_environment_and_flag(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('[server]\ndevice = "gpu"\n')
    with pytest.raises(ValueError, match=r"^invalid settings: device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'$"):
        load_settings(config, environ={})
    with pytest.raises(ValueError, match=r"device: expected .*, got 'cuda:x'"):
        load_settings(config, environ={"LAYERMASK_DEVICE": "cuda:x"})
    assert load_settings(config, environ={"LAYERMASK_DEVICE": "cuda:x"}, overrides={"device": "cpu"}).device == "cpu"


@without_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_is_refused_where_absent(device: str) -> None:
    with pytest.raises(ValueError) as error:
        Settings(device=device)
    assert str(error.value) == f"device: {device!r} {CUDA_ABSENT}"
    with pytest.raises(ValueError, match=f"^invalid settings: device: '{device}' requested but CUDA"):
        load_settings(environ={"LAYERMASK_DEVICE": device})


@pytest.mark.parametrize("other", [{"format": "onnx"}, {"backend": "torchserve"}])
def test_the_device_applies_to_the_embedded_torch_models_only(other: dict[str, str]) -> None:
    assert Settings(device="cpu", **other).device == "cpu"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^device: 'cuda' applies to the embedded backend with format 'torch' only"):
        Settings(device="cuda", **other)  # type: ignore[arg-type]


@without_cuda
def test_serve_refuses_cuda_in_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAYERMASK_DEVICE", raising=False)
    assert main(["serve", "--device", "cuda"]) == 2
    assert capsys.readouterr().err == f"layermask: error: invalid settings: device: 'cuda' {CUDA_ABSENT}\n"
    assert main(["serve", "--device", "gpu"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "layermask: error: invalid settings: device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"]


def _explain_on(device: str, default_model: layermask.LoadedModel) -> tuple[RunningServer, layermask.LoadedModel]:
    """Explain through a server whose embedded backend runs on ``device``; check it against the local CPU."""
    server = RunningServer(Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                    device=device))
    try:
        with ExplainClient(server.target, timeout=120) as client:
            response = client.explain(explain_request(png_bytes(data.chelsea()), segmentation="grid",
                                                      num_samples=24, seed=2))
        local = layermask.explain(default_model, data.chelsea(), segmentation="grid", num_samples=24, seed=2)
        label = local.labels[0]
        assert response.explanations[0].label == label
        np.testing.assert_allclose(response.explanations[0].weights, local.explanations[label].weights, atol=1e-4)
        return server, server.server.backend.models["efficientnet_lite0"]
    except BaseException:
        server.stop()
        raise


def test_the_embedded_backend_explains_on_an_explicit_cpu(default_model: layermask.LoadedModel) -> None:
    server, model = _explain_on("cpu", default_model)
    try:
        loaded = server.metric("layermask_model_load_seconds", format="torch", model="efficientnet_lite0",
                               provider="pytorch-cpu")
    finally:
        server.stop()
    assert loaded > 0
    assert model.device == torch.device("cpu")
    assert {t.device.type for t in model.torch_network().state_dict().values()} == {"cpu"}
    masked = cached_masker("layer", model).model  # type: ignore[attr-defined]
    assert {t.device.type for t in masked.state_dict().values()} == {"cpu"}


@pytest.mark.gpu
def test_the_embedded_backend_explains_on_cuda(default_model: layermask.LoadedModel, exact_cuda: None) -> None:
    server, model = _explain_on("cuda", default_model)
    try:
        loaded = server.metric("layermask_model_load_seconds", format="torch", model="efficientnet_lite0",
                               provider="pytorch-cuda")
    finally:
        server.stop()
    assert loaded > 0
    assert model.device.type == "cuda"
    # The converted model's own constants (folded batch norm, fill kernels) moved with it.
    masked = cached_masker("layer", model).model  # type: ignore[attr-defined]
    assert {t.device.type for t in masked.state_dict().values()} == {"cuda"}
