"""Masking strategies behind one interface: ``get_masker(name, model)(images, masks) -> logits``.

``layer`` carries the mask through every layer (:func:`layermask.layer_mask`). The others paint the
hidden region of the input (1 = visible in ``masks``) and run the unchanged network, which is what
most LIME implementations do:

- ``grey``: the normalisation mean colour, 0 after normalisation (the ImageNet mean colour for
  ImageNet-normalised models);
- ``black``: RGB (0, 0, 0), i.e. ``-mean / std`` after normalisation;
- ``blur``: a Gaussian-blurred copy of the image.

Each strategy runs where its inputs are: ``layer`` on the network's device (its converted
constants are moved there), the fills on the images' device.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torchvision.transforms.functional as TF
from torch import nn

from layermask.devices import module_device
from layermask.masking.names import MASKING_STRATEGIES
from layermask.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from layermask.models.registry import LoadedModel
from layermask.transform import layer_mask
from layermask.transform.inputs import check_images_and_masks

__all__ = ["FillMasker", "LayerMasker", "Masker", "cached_masker", "get_masker"]

Masker = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LayerMasker:
    """Layer masking: hidden pixels have no influence on the output."""

    def __init__(self, network: nn.Module) -> None:
        # The converter creates its own constants (folded batch norm, fill kernels) on the CPU.
        self.model = layer_mask(network).to(module_device(network))

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.model(images, masks)


class FillMasker:
    """Replace hidden pixels by ``fill(images)`` and run the unchanged network."""

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor],
                 fill: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if isinstance(network, nn.Module) and network.training:
            raise ValueError("the model is in training mode; call model.eval() first")
        self.network = network
        self.fill = fill

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        check_images_and_masks(images, masks, channels=3)
        masks = masks.to(images.dtype)
        return self.network(torch.lerp(self.fill(images), images, masks))


def _constant_colour(colour: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fill(images: torch.Tensor) -> torch.Tensor:
        return colour.to(images.device, images.dtype).view(1, -1, 1, 1).expand_as(images)

    return fill


def _gaussian_blur(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    kernel = 2 * round(3 * sigma) + 1

    def fill(images: torch.Tensor) -> torch.Tensor:
        return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])

    return fill


def _fully_visible(runtime: Masker) -> Callable[[torch.Tensor], torch.Tensor]:
    """A mask-aware model with nothing hidden is the plain network (property 2 of the spec)."""

    def network(images: torch.Tensor) -> torch.Tensor:
        return runtime(images, torch.ones(images.shape[0], 1, *images.shape[2:], dtype=images.dtype,
                                          device=images.device))

    return network


def get_masker(
    name: str,
    model: nn.Module | LoadedModel,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    blur_sigma: float = 10.0,
) -> Masker:
    """Return the masking strategy ``name`` for ``model`` as a callable ``(images, masks) -> logits``.

    ``model`` is a :class:`~layermask.models.LoadedModel` (its normalisation is used) or a plain
    eval-mode network (ImageNet normalisation unless ``mean``/``std`` are given). ``images`` are
    normalised N×3×H×W tensors, ``masks`` N×1×H×W with 1 = visible.
    """
    runtime = None
    network: Callable[[torch.Tensor], torch.Tensor]
    if isinstance(model, LoadedModel):
        mean = mean or model.preprocessing.mean
        std = std or model.preprocessing.std
        runtime = model.masked_runtime
        network = _fully_visible(runtime) if runtime is not None else model.torch_network()
    else:
        network = model
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    if name == "layer":
        return runtime if runtime is not None else LayerMasker(network)  # type: ignore[arg-type]
    if name == "grey":
        return FillMasker(network, _constant_colour(torch.zeros(3)))
    if name == "black":
        return FillMasker(network, _constant_colour(-torch.tensor(mean) / torch.tensor(std)))
    if name == "blur":
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be positive, got {blur_sigma}")
        return FillMasker(network, _gaussian_blur(blur_sigma))
    raise ValueError(f"unknown masking strategy {name!r}; choose one of {', '.join(MASKING_STRATEGIES)}")


_MASKERS: weakref.WeakKeyDictionary[object, dict[tuple[str, torch.device], Masker]] = weakref.WeakKeyDictionary()


def cached_masker(name: str, model: LoadedModel) -> Masker:
    """:func:`get_masker` for a loaded model, converted once per network, device and strategy."""
    per_network = _MASKERS.setdefault(model.network if model.network is not None else model.masked_runtime, {})
    key = (name, model.device)
    if key not in per_network:
        per_network[key] = get_masker(name, model)
    return per_network[key]
