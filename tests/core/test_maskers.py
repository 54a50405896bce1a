"""Every masking strategy: one interface, the right fill, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

import layermask
from tests.helpers.networks import SeededNetworks, images_and_masks


@pytest.fixture(scope="module")
def network(seeded_network: SeededNetworks) -> torch.nn.Module:
    return seeded_network("resnet18")


@pytest.mark.parametrize("name", layermask.MASKING_STRATEGIES)
def test_every_strategy_takes_images_and_masks(network: torch.nn.Module, name: str) -> None:
    images, masks = images_and_masks(2)
    logits = layermask.get_masker(name, network)(images, masks)
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


@torch.inference_mode()
def test_fill_strategies_paint_the_hidden_region(network: torch.nn.Module) -> None:
    images, masks = images_and_masks(2)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    black = (-mean / std).view(1, 3, 1, 1)
    blurred = TF.gaussian_blur(images, [61, 61], [10.0, 10.0])
    expected = {
        "grey": network(images * masks),
        "black": network(images * masks + black * (1 - masks)),
        "blur": network(images * masks + blurred * (1 - masks)),
    }
    for name, logits in expected.items():
        out = layermask.get_masker(name, network)(images, masks)
        assert torch.allclose(out, logits, atol=1e-4), name


def test_black_uses_the_models_own_normalisation(default_model: layermask.LoadedModel) -> None:
    images, masks = images_and_masks(1)
    out = layermask.get_masker("black", default_model)(images, masks)
    with torch.inference_mode():
        expected = default_model.network(images * masks - (1 - masks))  # mean = std = 0.5: black is -1
    assert torch.allclose(out, expected, atol=1e-4)


def test_layer_masking_ignores_hidden_content_and_grey_does_not_see_it_either(network: torch.nn.Module) -> None:
    images, masks = images_and_masks(1)
    noisy = images + 5 * torch.randn_like(images) * (1 - masks)
    for name in ("layer", "grey"):
        masker = layermask.get_masker(name, network)
        assert torch.equal(masker(images, masks), masker(noisy, masks))


def test_unknown_strategy_is_refused(network: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown masking strategy 'pink'.*layer, grey, black, blur"):
        layermask.get_masker("pink", network)


BAD_INPUTS = {
    "mask shape": (lambda i, m: (i, m[:, :, :100]), "mask shape .* does not match"),
    "mask batch": (lambda i, m: (i, m[:1]), "mask shape .* does not match"),
    "non-binary mask": (lambda i, m: (i, m * 0.5), "binary"),
    "NaN image": (lambda i, m: (i.index_put((torch.tensor(0),), torch.tensor(float("nan"))), m), "NaN or Inf"),
    "Inf image": (lambda i, m: (i.index_put((torch.tensor(1),), torch.tensor(float("inf"))), m), "NaN or Inf"),
    "channels": (lambda i, m: (i[:, :2], m), "3 channels, got 2"),
    "rank": (lambda i, m: (i[0], m), "N×C×H×W"),
}


@pytest.mark.parametrize("strategy", layermask.MASKING_STRATEGIES)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_value_error_naming_the_problem(network: torch.nn.Module, strategy: str, case: str) -> None:
    images, masks = images_and_masks(2)
    make, message = BAD_INPUTS[case]
    bad_images, bad_masks = make(images.clone(), masks.clone())
    with pytest.raises(ValueError, match=message):
        layermask.get_masker(strategy, network)(bad_images, bad_masks)
