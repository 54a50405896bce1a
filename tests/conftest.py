"""Shared fixtures: seeded architectures, the real default model, and masks."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

import layermask
from layermask.masks import random_patch_masks

TORCHVISION_ARCHITECTURES = [
    # The paper's seven.
    "resnet50", "wide_resnet50_2", "squeezenet1_1", "alexnet", "densenet121", "efficientnet_b0",
    "mobilenet_v3_large",
    # Also in scope.
    "resnet18", "resnext50_32x4d", "vgg16_bn", "mobilenet_v2",
]
ALL_ARCHITECTURES = [*TORCHVISION_ARCHITECTURES, "efficientnet_lite0"]


def randomise_batch_norm_statistics(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters.

    Freshly initialised torchvision models have mean 0 / variance 1, which would hide mistakes
    in how batch norm is carried (or folded) through the mask.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)


@functools.cache
def seeded_network(name: str) -> nn.Module:
    """An eval-mode network: the real default model, or a torchvision architecture with seeded random weights."""
    if name == "efficientnet_lite0":
        return layermask.load_model(name).network
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    randomise_batch_norm_statistics(model, seed=1)
    return model.eval()


@functools.cache
def converted(name: str) -> layermask.LayerMaskedModel:
    return layermask.layer_mask(seeded_network(name))


@pytest.fixture(scope="session")
def default_model() -> layermask.LoadedModel:
    return layermask.load_model("efficientnet_lite0")


def images_and_masks(batch: int, size: int = 224, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = random_patch_masks(batch, (size, size), patch=16, hidden_fraction=0.5, seed=seed)
    return images, masks
