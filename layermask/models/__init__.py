"""Models by name: the registry, the default EfficientNet-Lite0, preprocessing and image decoding."""

from layermask.models import efficientnet_lite as _efficientnet_lite  # noqa: F401  (registers the builder)
from layermask.models.images import decode_image, load_image
from layermask.models.preprocessing import ImageLike, Preprocessing
from layermask.models.registry import DEFAULT_MODEL, LoadedModel, list_models, load_model, register_model

__all__ = [
    "DEFAULT_MODEL",
    "ImageLike",
    "LoadedModel",
    "Preprocessing",
    "decode_image",
    "list_models",
    "load_image",
    "load_model",
    "register_model",
]
