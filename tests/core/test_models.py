"""The model registry: the real default model and torchvision architectures from local files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from skimage import data

import layermask


def top1(model: layermask.LoadedModel, image: np.ndarray, masked: bool = False) -> int:
    x = model.preprocess(image)[None]
    with torch.inference_mode():
        logits = layermask.layer_mask(model.network)(x, torch.ones(1, 1, *model.input_size)) if masked \
            else model.network(x)
    return int(logits.argmax())


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "layer-masked"])
def test_default_model_recognises_real_photos(default_model: layermask.LoadedModel, masked: bool) -> None:
    assert default_model.name == "efficientnet_lite0" == layermask.DEFAULT_MODEL
    assert 281 <= top1(default_model, data.chelsea(), masked) <= 285  # a cat
    assert top1(default_model, data.coffee(), masked) == 967  # espresso


@pytest.fixture(scope="module")
def larger_lite(request: pytest.FixtureRequest) -> layermask.LoadedModel:
    return layermask.load_model(request.param)


@pytest.mark.parametrize(("larger_lite", "input_size", "resize_size"), [
    ("efficientnet_lite1", (240, 240), 272),
    ("efficientnet_lite2", (260, 260), 292),
], indirect=["larger_lite"], ids=["lite1", "lite2"])
def test_larger_efficientnet_lites_recognise_real_photos(larger_lite: layermask.LoadedModel,
                                                         input_size: tuple[int, int], resize_size: int) -> None:
    assert larger_lite.input_size == input_size and larger_lite.preprocessing.resize_size == resize_size
    assert larger_lite.name in layermask.list_models() and not larger_lite.network.training
    masked = layermask.layer_mask(larger_lite.network)
    for image, expected in [(data.chelsea(), range(281, 286)), (data.coffee(), [967])]:  # a cat; espresso
        x = larger_lite.preprocess(image)[None]
        assert x.shape == (1, 3, *input_size)
        with torch.inference_mode():
            logits = larger_lite.network(x)
            masked_logits = masked(x, torch.ones(1, 1, *input_size))
        assert int(logits.argmax()) in expected
        torch.testing.assert_close(masked_logits, logits, rtol=0, atol=1e-4)  # an all-ones mask changes nothing


def test_default_model_metadata(default_model: layermask.LoadedModel) -> None:
    assert default_model.input_size == (224, 224)
    assert default_model.num_classes == 1000
    assert default_model.class_names[967] == "espresso"
    assert not default_model.network.training


@pytest.mark.parametrize("image", [
    np.zeros((300, 400), dtype=np.uint8),           # greyscale
    np.zeros((300, 400, 4), dtype=np.uint8),        # RGBA
    np.random.default_rng(0).random((50, 80, 3)),   # float in [0, 1], smaller than the input size
])
def test_preprocessing_gives_a_normalised_input_tensor(default_model: layermask.LoadedModel,
                                                       image: np.ndarray) -> None:
    assert default_model.preprocess(image).shape == (3, 224, 224)


def test_preprocessing_rejects_bad_arrays(default_model: layermask.LoadedModel) -> None:
    with pytest.raises(ValueError, match="H×W"):
        default_model.preprocess(np.zeros((10, 10, 2)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        default_model.preprocess(np.full((10, 10, 3), np.nan))


@pytest.fixture
def resnet18_weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    network = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pt"
    torch.save(network.state_dict(), path)
    return path, network


def test_torchvision_architecture_loads_local_weights(resnet18_weights: tuple[Path, torch.nn.Module]) -> None:
    path, network = resnet18_weights
    model = layermask.load_model("resnet18", weights=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(model.network(x), network(x))
    assert model.class_names[0] == "tench" and model.input_size == (224, 224)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file for model 'resnet18' not found"):
        layermask.load_model("resnet18", weights=tmp_path / "nope.pt")


def test_mismatched_state_dict_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match=r"does not match architecture 'resnet18'.*Unexpected key"):
        layermask.load_model("resnet18", weights=path)


def test_non_state_dict_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        layermask.load_model("resnet18", weights=path)


class Payload:
    """Not a tensor: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "payload.pt"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(ValueError, match="cannot read weights file"):
        layermask.load_model("resnet18", weights=path)


def test_torchvision_architecture_without_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a local weights file"):
        layermask.load_model("resnet50")


def test_unknown_model_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown model 'resnet51'"):
        layermask.load_model("resnet51")
    assert "efficientnet_lite0" in layermask.list_models() and "resnet50" in layermask.list_models()
