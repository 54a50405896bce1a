"""Turning a photo (PIL image or ndarray) into a normalised model input tensor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageLike", "Preprocessing", "to_rgb_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Image.Image | np.ndarray


def to_rgb_image(image: ImageLike) -> Image.Image:
    """Return ``image`` as an RGB PIL image; ndarrays may be H×W, H×W×3 or H×W×4, uint8 or float in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    array = image
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise ValueError("image array contains NaN or Inf values")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize_size``, centre-crop ``input_size``, scale to [0, 1], normalise."""

    input_size: tuple[int, int] = (224, 224)
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: TF.InterpolationMode = TF.InterpolationMode.BILINEAR

    def crop(self, image: ImageLike) -> Image.Image:
        """The RGB image the model sees, before normalisation (what masks and heatmaps are drawn on)."""
        resized = TF.resize(to_rgb_image(image), self.resize_size, interpolation=self.interpolation)
        return TF.center_crop(resized, list(self.input_size))

    def crop_label_map(self, labels: np.ndarray) -> np.ndarray:
        """An integer label map drawn on the original image, resized (nearest) and cropped like it."""
        resized = TF.resize(Image.fromarray(labels.astype(np.int32)), self.resize_size,
                            interpolation=TF.InterpolationMode.NEAREST)
        return np.asarray(TF.center_crop(resized, list(self.input_size))).astype(np.int32)

    def resized_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) after the resize of an image of ``image_size`` (height, width), as torchvision does."""
        height, width = image_size
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize_size * long / short)
        return (new_long, self.resize_size) if height > width else (self.resize_size, new_long)

    def crop_indices(self, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Where each row and column of an image of ``image_size`` (height, width) lands in the crop.

        Two int64 arrays (one entry per row, one per column): the crop row or column holding the
        pixel's centre after the resize, or -1 where the pixel lies outside the crop. A map ``m``
        drawn on the crop comes back to the image as ``m[rows][:, columns]`` where both are ≥ 0.
        """
        indices = []
        for original, resized, cropped in zip(image_size, self.resized_size(image_size), self.input_size):
            # center_crop's offset; a crop larger than the resized image pads it (left/top gets the floor)
            offset = round((resized - cropped) / 2.0) if resized >= cropped else -((cropped - resized) // 2)
            index = np.floor((np.arange(original) + 0.5) * resized / original).astype(np.int64) - offset
            indices.append(np.where((index >= 0) & (index < cropped), index, -1))
        return indices[0], indices[1]

    def normalise(self, image: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(image), list(self.mean), list(self.std))

    def __call__(self, image: ImageLike) -> torch.Tensor:
        """A 3×H×W float tensor at the model's input size."""
        return self.normalise(self.crop(image))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary: the fields, with lists for tuples and the interpolation's name."""
        return {"input_size": list(self.input_size), "resize_size": self.resize_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """The inverse of :meth:`to_dict`; ``ValueError`` names a missing, unknown or malformed entry."""
        names = [f.name for f in fields(cls)]
        missing, unknown = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(f"preprocessing: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")
        try:
            height, width = (int(side) for side in data["input_size"])
            mean, std = (tuple(float(v) for v in data[key]) for key in ("mean", "std"))
            if len(mean) != 3 or len(std) != 3:
                raise ValueError("mean and std need three values")
            return cls(input_size=(height, width), resize_size=int(data["resize_size"]),
                       mean=mean, std=std,
                       interpolation=TF.InterpolationMode(data["interpolation"]))
        except (TypeError, ValueError) as error:
            raise ValueError(f"preprocessing: {error}") from None

    def denormalise(self, tensor: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation, for display: values in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return (tensor * std + mean).clamp(0.0, 1.0)
