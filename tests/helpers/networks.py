"""Test networks: the architectures in scope, seeded weights with non-trivial batch norm, and masked inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

import layermask
from layermask.masking import random_patch_masks

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


def build_seeded_network(name: str) -> nn.Module:
    """An eval-mode network: the real default model, or a torchvision architecture with seeded random weights."""
    if name == "efficientnet_lite0":
        return layermask.load_model(name).network
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    randomise_batch_norm_statistics(model, seed=1)
    return model.eval()


def images_and_masks(batch: int, size: int = 224, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = random_patch_masks(batch, (size, size), patch=16, hidden_fraction=0.5, seed=seed)
    return images, masks


SeededNetworks = Callable[[str], nn.Module]
"""The ``seeded_network`` fixture: architecture name → eval-mode network with seeded weights."""
ConvertedNetworks = Callable[[str], layermask.LayerMaskedModel]
"""The ``converted`` fixture: architecture name → its layer-masked version."""


class UpsamplingNet(nn.Module):
    """A network with an operation layer masking has no rule for (nearest upsampling)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.decoder = nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.decoder(self.stem(x))
        return self.head(x.mean((2, 3)))
