"""The real photos of the evidence report: the ones that ship offline inside scikit-image and
scikit-learn, each with the ImageNet classes it honestly shows.

A photo's ``labels`` are the ImageNet-1k classes a person would accept as a correct top-1 answer for
it (the cat in ``chelsea`` is a tabby, a tiger cat or an Egyptian cat; ImageNet does not tell these
apart reliably). Photos of things ImageNet has no class for (an astronaut, a sport motorcycle, a
dahlia) have none: they take part in every experiment except the accuracy against true labels.

No labelled ImageNet-style image set ships inside a registry package (see the report's text for the
ones checked), so these labelled photos are the only ground truth of the accuracy curves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from layermask.models.registry import IMAGENET_CATEGORIES

__all__ = ["PHOTO_LABELS", "Photo", "load_photos"]


@dataclass(frozen=True)
class Photo:
    """One photo: ``pixels`` H×W×3 uint8 RGB, ``labels`` the ImageNet class indices it shows (maybe none)."""

    name: str
    source: str
    pixels: np.ndarray
    labels: tuple[int, ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(IMAGENET_CATEGORIES[i] for i in self.labels)


PHOTO_LABELS: dict[str, tuple[str, ...]] = {
    "chelsea": ("tabby", "tiger cat", "Egyptian cat"),
    "coffee": ("espresso", "cup"),
    "rocket": ("space shuttle", "missile", "projectile"),
    "camera": ("tripod",),  # the cameraman's camera stands on a tripod
    "china": ("palace",),  # the Tower of Buddhist Incense in the Summer Palace, Beijing
    "astronaut": (),
    "motorcycle": (),
    "flower": (),  # a dahlia; ImageNet's only garden flower classes are daisy and yellow lady's slipper
}
"""Every photo's honest ImageNet class names, in the report's order (labelled photos first)."""


def _skimage(name: str) -> tuple[str, Callable[[], np.ndarray]]:
    from skimage import data

    if name == "motorcycle":
        return "skimage.data.stereo_motorcycle (left view)", lambda: data.stereo_motorcycle()[0]
    return f"skimage.data.{name}", getattr(data, name)


def _sklearn(index: int, file: str) -> tuple[str, Callable[[], np.ndarray]]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return np.asarray(load_sample_images().images[index])

    return f"sklearn.datasets.load_sample_images ({file})", load


def _loaders() -> dict[str, tuple[str, Callable[[], np.ndarray]]]:
    sklearn = {"china": _sklearn(0, "china.jpg"), "flower": _sklearn(1, "flower.jpg")}
    return {name: sklearn.get(name) or _skimage(name) for name in PHOTO_LABELS}


def _rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    pixels = np.ascontiguousarray(pixels[..., :3].astype(np.uint8))
    pixels.setflags(write=False)  # shared by every caller of the cached loader
    return pixels


@cache
def _load(name: str) -> Photo:
    source, loader = _loaders()[name]
    index = {category: i for i, category in enumerate(IMAGENET_CATEGORIES)}
    return Photo(name, source, _rgb(loader()), tuple(index[label] for label in PHOTO_LABELS[name]))


def load_photos(limit: int | None = None) -> list[Photo]:
    """The first ``limit`` photos of :data:`PHOTO_LABELS` (all when ``None``), loaded from the installed packages."""
    names = list(PHOTO_LABELS)[:limit]
    if not names:
        raise ValueError(f"photo limit must be at least 1, got {limit}")
    return [_load(name) for name in names]
