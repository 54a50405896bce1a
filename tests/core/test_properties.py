"""The five properties of layer-masking-spec.md, on every architecture in scope."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.networks import ALL_ARCHITECTURES, ConvertedNetworks, SeededNetworks, images_and_masks

pytestmark = pytest.mark.parametrize("name", ALL_ARCHITECTURES)


@torch.inference_mode()
def test_exact_invariance_to_hidden_content(name: str, converted: ConvertedNetworks) -> None:
    images, masks = images_and_masks(2, seed=1)
    other, _ = images_and_masks(2, seed=2)
    model = converted(name)
    reference = model(images * masks, masks)
    hidden = 1 - masks
    for content in (torch.zeros_like(images), 10 * torch.randn_like(images), other):
        out = model(images * masks + content * hidden, masks)
        assert (out - reference).abs().max().item() <= 1e-6


@torch.inference_mode()
def test_identity_at_full_visibility(name: str, converted: ConvertedNetworks, seeded_network: SeededNetworks) -> None:
    images, _ = images_and_masks(2, seed=3)
    original = seeded_network(name)(images)
    out = converted(name)(images, torch.ones(2, 1, 224, 224))
    assert (out - original).abs().max().item() <= 1e-4 * original.abs().max().item()


@torch.inference_mode()
def test_batch_independence(name: str, converted: ConvertedNetworks) -> None:
    images, masks = images_and_masks(3, seed=4)
    model = converted(name)
    together = model(images, masks)
    for i in range(3):
        alone = model(images[i : i + 1], masks[i : i + 1])
        scale = alone.abs().max().item()
        assert (together[i] - alone[0]).abs().max().item() <= 1e-5 * max(scale, 1.0)
    # Changing a neighbour in the batch leaves a sample's output alone.
    swapped = model(torch.cat([images[:1], images[2:], images[1:2]]), torch.cat([masks[:1], masks[2:], masks[1:2]]))
    assert (swapped[0] - together[0]).abs().max().item() <= 1e-5 * max(together[0].abs().max().item(), 1.0)


@torch.inference_mode()
def test_empty_mask_gives_finite_output(name: str, converted: ConvertedNetworks) -> None:
    images, _ = images_and_masks(2, seed=5)
    out = converted(name)(images, torch.zeros(2, 1, 224, 224))
    assert torch.isfinite(out).all()
