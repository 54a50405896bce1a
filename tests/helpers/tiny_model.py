"""A tiny classifier that layer masking converts in a moment, for tests that need any model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import layermask
from layermask.models.preprocessing import Preprocessing


class BrightnessClassifier(nn.Module):
    """Three classes scored by the mean brightness of the (visible) image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(1, 3)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 3)
            self.head.weight.copy_(torch.tensor([[4.0], [0.0], [-4.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x)).flatten(1))


def tiny_model(preprocessing: Preprocessing | None = None) -> layermask.LoadedModel:
    """The classifier with ImageNet's 256 → 224 preprocessing unless told otherwise."""
    return layermask.LoadedModel("tiny", BrightnessClassifier().eval(), preprocessing or Preprocessing(),
                                 ["bright", "middle", "dark"])


def tiny_model_at(size: int) -> layermask.LoadedModel:
    """The classifier taking a ``size``×``size`` input as it is (no resize, no crop), normalised to [-1, 1]."""
    return tiny_model(Preprocessing(input_size=(size, size), resize_size=size, mean=(0.5,) * 3, std=(0.5,) * 3))


def noisy_ramp(size: int, seed: int = 3) -> np.ndarray:
    """A ``size``² RGB photo whose brightness varies across it, with noise, so that every segment matters
    differently to the classifier."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)[None, :, None] * np.linspace(0.3, 1.0, size)[:, None, None]
    return np.clip(ramp + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
