"""Property 5: torchvision ResNet-50 matches a literal implementation of the spec."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.networks import ConvertedNetworks, SeededNetworks, images_and_masks
from tests.helpers.reference_resnet import reference_forward


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
@torch.inference_mode()
def test_matches_literal_reference(name: str, converted: ConvertedNetworks, seeded_network: SeededNetworks) -> None:
    images, masks = images_and_masks(3, seed=7)
    masks[2] = 0.0  # an empty mask too
    masks[1] = 1.0  # and a full one
    expected = reference_forward(seeded_network(name), images, masks)
    out = converted(name)(images, masks)
    assert (out - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


@torch.inference_mode()
def test_reference_is_sensitive_to_the_mask(seeded_network: SeededNetworks) -> None:
    """Guards the comparison above: different masks must give clearly different logits."""
    images, masks = images_and_masks(2, seed=8)
    model = seeded_network("resnet50")
    a = reference_forward(model, images, masks)
    b = reference_forward(model, images, torch.ones_like(masks))
    assert (a - b).abs().max().item() > 1e-2 * b.abs().max().item()
