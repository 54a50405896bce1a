"""Composites with a known object region, the ground truth of experiments 3 and 4.

An object is cut out of one of the report's real photos (:mod:`layermask.evaluation.photos`) along a
hand-drawn outline (:data:`OBJECTS`), scaled, maybe mirrored, and pasted at a random place onto a
real texture from scikit-image. The pasted pixels are the ground truth: a boolean mask at the
model's input size that is True exactly where object pixels replaced texture pixels.

A composite is drawn on a canvas the model's preprocessing leaves untouched except for its
centre crop (its shorter side is the resize size), so the crop the model sees is the composite
pixel for pixel and the object always lies inside that crop. Only composites the model classifies
as the object (top-1 in the object's classes) are kept; candidates are drawn per object from a
generator seeded by the run's seed, so a seed gives the same composites on every machine.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image
from skimage.draw import ellipse, polygon

from layermask.evaluation.common import EvaluationSettings
from layermask.evaluation.photos import load_photos
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import IMAGENET_CATEGORIES, LoadedModel

__all__ = ["OBJECTS", "TEXTURES", "Composite", "CompositeSet", "ObjectRegion", "build_composites", "canvas_shape",
           "composites_for", "draw_candidate"]

TEXTURES = ("grass", "gravel", "brick")
"""The backgrounds: greyscale textures of ``skimage.data``, used as grey RGB."""

SCALE_RANGE = (0.5, 0.85)
"""The object's longer side, as a fraction of the input's shorter side (uniform)."""

ATTEMPTS_PER_COMPOSITE = 20
"""The most candidates drawn per wanted composite of an object before giving up."""


@dataclass(frozen=True)
class ObjectRegion:
    """An object in one of the report's photos: its outline in the photo's pixel coordinates and its classes.

    ``outline`` is ``("ellipse", centre x, centre y, radius x, radius y)`` or ``("polygon", (x, y), …)``.
    ``classes`` are the ImageNet class names counted as recognising the object; the nearest classes
    ImageNet has where it has no exact one (ImageNet has no motorcycle or space helmet).
    """

    name: str
    photo: str
    outline: tuple
    classes: tuple[str, ...]

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(IMAGENET_CATEGORIES.index(name) for name in self.classes)


OBJECTS: tuple[ObjectRegion, ...] = (
    ObjectRegion("cat's head", "chelsea", ("ellipse", 230, 160, 215, 150), ("tabby", "tiger cat", "Egyptian cat")),
    ObjectRegion("espresso cup", "coffee", ("ellipse", 280, 215, 205, 170), ("espresso", "cup", "coffee mug")),
    ObjectRegion("motorcycle", "motorcycle",
                 ("polygon", (90, 200), (150, 150), (340, 150), (470, 100), (560, 110), (640, 270), (680, 330),
                  (680, 440), (600, 450), (520, 380), (360, 380), (280, 400), (150, 400), (120, 330), (100, 250)),
                 ("moped", "motor scooter")),
    ObjectRegion("space helmet", "astronaut", ("ellipse", 400, 445, 125, 105), ("crash helmet", "football helmet")),
)
"""The hand-drawn object regions, in the order composites are assigned to them. (The dahlia of ``flower`` is left
out: EfficientNet-Lite2 calls its composites a tray or a honeycomb, never a daisy.)"""


@dataclass(frozen=True)
class Composite:
    """One kept composite.

    ``photo`` is the canvas to give :func:`layermask.explain` (its centre crop is ``image``);
    ``image`` (H×W×3 uint8) what the model sees at its input size; ``mask`` (H×W bool) the pasted
    object; ``label`` the model's top-1 class on it (one of ``classes``) and ``probability`` its
    probability.
    """

    object: str
    texture: str
    photo: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    classes: tuple[int, ...]
    label: int
    probability: float

    def tensor(self, preprocessing: Preprocessing) -> torch.Tensor:
        """The normalised 1×3×H×W model input."""
        return preprocessing(self.photo).unsqueeze(0)


@dataclass(frozen=True)
class CompositeSet:
    """The kept composites and how many candidates were drawn (per object, in :data:`OBJECTS` order)."""

    composites: list[Composite]
    attempts: dict[str, int]
    kept: dict[str, int]

    @property
    def tried(self) -> int:
        return sum(self.attempts.values())


def canvas_shape(preprocessing: Preprocessing) -> tuple[tuple[int, int], tuple[int, int]]:
    """The canvas (height, width) that the preprocessing only centre-crops, and the crop's (top, left) in it."""
    height, width = preprocessing.input_size
    size = preprocessing.resize_size
    if min(height, width) > size:
        raise ValueError(f"the input size {preprocessing.input_size} exceeds the resize size {size}")
    canvas = (max(height, size), max(width, size))
    return canvas, (round((canvas[0] - height) / 2), round((canvas[1] - width) / 2))


@cache
def _cutout(region: ObjectRegion) -> tuple[np.ndarray, np.ndarray]:
    """The object's bounding box of its photo (H×W×3 uint8) and its outline inside it (H×W bool)."""
    pixels = {photo.name: photo.pixels for photo in load_photos()}[region.photo]
    inside = np.zeros(pixels.shape[:2], dtype=bool)
    kind, *geometry = region.outline
    if kind == "ellipse":
        cx, cy, rx, ry = geometry
        rows, columns = ellipse(cy, cx, ry, rx, shape=inside.shape)
    else:
        points = np.asarray(geometry, dtype=float)
        rows, columns = polygon(points[:, 1], points[:, 0], shape=inside.shape)
    inside[rows, columns] = True
    ys, xs = np.nonzero(inside)
    box = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return pixels[box], inside[box]


@cache
def _texture(name: str) -> np.ndarray:
    from skimage import data

    rgb = np.repeat(getattr(data, name)()[..., None], 3, axis=2)
    rgb.setflags(write=False)  # shared by every candidate
    return rgb


def _background(rng: np.random.Generator, texture: str, canvas: tuple[int, int]) -> np.ndarray:
    """A random canvas-sized window of ``texture``, turned by a random multiple of 90°."""
    pixels = np.rot90(_texture(texture), int(rng.integers(4)))
    if pixels.shape[0] < canvas[0] or pixels.shape[1] < canvas[1]:
        factor = max(canvas[0] / pixels.shape[0], canvas[1] / pixels.shape[1])
        size = (int(np.ceil(pixels.shape[1] * factor)), int(np.ceil(pixels.shape[0] * factor)))
        pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(size, Image.Resampling.BICUBIC))
    top = int(rng.integers(pixels.shape[0] - canvas[0] + 1))
    left = int(rng.integers(pixels.shape[1] - canvas[1] + 1))
    return pixels[top : top + canvas[0], left : left + canvas[1]].copy()


def draw_candidate(rng: np.random.Generator, region: ObjectRegion,
                   preprocessing: Preprocessing) -> tuple[str, np.ndarray, np.ndarray]:
    """One random composite of ``region``: (texture, canvas H'×W'×3 uint8, object mask on the canvas)."""
    canvas, (top, left) = canvas_shape(preprocessing)
    height, width = preprocessing.input_size
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    photo = _background(rng, texture, canvas)
    pixels, inside = _cutout(region)
    side = rng.uniform(*SCALE_RANGE) * min(height, width)
    factor = side / max(pixels.shape[:2])
    size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))  # PIL: (w, h)
    scaled = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
    coverage = np.asarray(Image.fromarray(inside.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    shape = coverage >= 0.5
    if rng.random() < 0.5:
        scaled, shape = scaled[:, ::-1], shape[:, ::-1]
    y = top + int(rng.integers(height - size[1] + 1))
    x = left + int(rng.integers(width - size[0] + 1))
    mask = np.zeros(canvas, dtype=bool)
    mask[y : y + size[1], x : x + size[0]] = shape
    photo[mask] = scaled[shape]
    return texture, photo, mask


def _quotas(count: int) -> list[int]:
    """``count`` composites shared out over :data:`OBJECTS` as evenly as possible, the first objects first."""
    return [count // len(OBJECTS) + (index < count % len(OBJECTS)) for index in range(len(OBJECTS))]


def build_composites(model: LoadedModel, count: int, seed: int, batch_size: int = 32,
                     progress: Callable[[str], None] | None = None) -> CompositeSet:
    """``count`` composites that ``model`` classifies as their object, shared out evenly over :data:`OBJECTS`.

    Each object draws candidates from its own generator (seeded by ``seed`` and its index) and keeps
    them in draw order; at most :data:`ATTEMPTS_PER_COMPOSITE` per wanted composite, else a
    ``RuntimeError`` says which object fell short.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    preprocessing = model.preprocessing
    canvas, (top, left) = canvas_shape(preprocessing)
    height, width = preprocessing.input_size
    crop = np.s_[top : top + height, left : left + width]
    kept: list[list[Composite]] = []
    attempts: dict[str, int] = {}
    for index, (region, quota) in enumerate(zip(OBJECTS, _quotas(count))):
        rng = np.random.default_rng([seed, index])
        found: list[Composite] = []
        tried, limit = 0, ATTEMPTS_PER_COMPOSITE * quota
        while len(found) < quota:
            if tried >= limit:
                raise RuntimeError(f"{model.name} classified only {len(found)} of {tried} composites of the "
                                   f"{region.name} as {' / '.join(region.classes)}; {quota} were wanted")
            wanted = min(batch_size, limit - tried, quota - len(found))  # more would mostly be thrown away
            candidates = [draw_candidate(rng, region, preprocessing) for _ in range(wanted)]
            photos = [photo for _, photo, _ in candidates]
            probabilities = _probabilities(model, photos, batch_size)
            for (texture, photo, mask), scores in zip(candidates, probabilities):
                tried += 1
                label = int(np.argmax(scores))
                if label in region.labels:
                    image = np.asarray(preprocessing.crop(photo))
                    if not np.array_equal(image, photo[crop]):
                        raise RuntimeError(f"the preprocessing of {model.name} changes more than the crop of a "
                                           f"{canvas[0]}×{canvas[1]} canvas")
                    found.append(Composite(region.name, texture, photo, image, np.ascontiguousarray(mask[crop]),
                                           region.labels, label, float(scores[label])))
        attempts[region.name] = tried
        kept.append(found)
        if progress is not None:
            progress(f"composites: {len(found)} of {tried} {region.name} candidates kept")
    interleaved = [c for group in _round_robin(kept) for c in group]
    return CompositeSet(interleaved, attempts, {region.name: len(k) for region, k in zip(OBJECTS, kept)})


def _round_robin(groups: Sequence[list[Composite]]) -> list[list[Composite]]:
    """The groups' members in turns (first of each group, then second of each…), so any prefix mixes objects."""
    longest = max(len(group) for group in groups)
    return [[group[i] for group in groups if i < len(group)] for i in range(longest)]


def _probabilities(model: LoadedModel, photos: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Every class's probability for each unmasked photo (layer masking with nothing hidden is the plain model)."""
    height, width = model.input_size
    jobs = [ScoringJob(model.preprocessing(photo).unsqueeze(0), "layer", masks=np.ones((1, height, width), np.uint8))
            for photo in photos]
    return [scores[0] for scores in score_jobs(model, jobs, batch_size)]


_BUILT: weakref.WeakKeyDictionary[object, dict[tuple[int, int], CompositeSet]] = weakref.WeakKeyDictionary()


def composites_for(model: LoadedModel, settings: EvaluationSettings,
                   progress: Callable[[str], None] | None = None) -> CompositeSet:
    """:func:`build_composites` for ``settings``, built once per network: experiments 3 and 4 share them."""
    per_network = _BUILT.setdefault(model.network if model.network is not None else model.masked_runtime, {})
    key = (settings.composites, settings.seed)  # the batch size does not change which composites are kept
    if key not in per_network:
        per_network[key] = build_composites(model, settings.composites, settings.seed, settings.batch_size, progress)
    return per_network[key]
