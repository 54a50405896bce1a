"""Running an exported layer-masked model with ONNX Runtime, behind the same call as the PyTorch one.

The execution providers are tried in the order of :data:`PREFERRED_PROVIDERS` (the one list of
them; the service's ``onnx_providers`` defaults to it). :func:`provider_options` gives each its
options: the GPU providers (CUDA, TensorRT) get the ``device_id`` of the GPU to use, e.g. the one
TorchServe assigned to a worker. Only ONNX Runtime's CPU provider has been measured in this
project; the CUDA and TensorRT paths are correct by construction, tested by inspecting the
options handed to ONNX Runtime (:attr:`OnnxMaskedModel.provider_options`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import LoadedModel
from layermask.transform.inputs import check_images_and_masks

__all__ = [
    "GPU_PROVIDERS",
    "PREFERRED_PROVIDERS",
    "OnnxMaskedModel",
    "ProviderOptions",
    "choose_providers",
    "load_onnx_model",
    "provider_options",
]

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})  # take a ``device_id`` option
log = logging.getLogger("layermask.onnx")

ProviderOptions = list[tuple[str, dict[str, str]]]
"""ONNX Runtime's ``providers=[(name, options), ...]`` form."""


def provider_options(providers: Sequence[str], device_id: int | str | None = None) -> ProviderOptions:
    """``providers`` with their options: ``device_id`` for the GPU providers when given, nothing else.

    Without a ``device_id`` ONNX Runtime's GPU providers use device 0.
    """
    gpu = {} if device_id is None else {"device_id": str(int(device_id))}
    return [(name, dict(gpu) if name in GPU_PROVIDERS else {}) for name in providers]


def choose_providers(preferred: Sequence[str] = PREFERRED_PROVIDERS) -> list[str]:
    """The preferred execution providers this onnxruntime build offers, in order of preference."""
    available = set(ort.get_available_providers())
    unknown = [p for p in preferred if p not in PREFERRED_PROVIDERS and p not in available]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; available: {sorted(available)}")
    chosen = [p for p in preferred if p in available]
    if not chosen:
        raise ValueError(f"none of the execution providers {list(preferred)} is available; have {sorted(available)}")
    return chosen


class OnnxMaskedModel:
    """``(images, masks) -> logits`` through ONNX Runtime; inputs are checked like the PyTorch model's.

    :attr:`provider_options` are the providers asked for, in order, with their options (``device_id``
    for the GPU ones, see :func:`provider_options`), before those this onnxruntime build lacks are
    dropped; :attr:`provider` is the execution provider that ONNX Runtime actually uses.
    """

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] = PREFERRED_PROVIDERS,
                 threads: int | None = None, device_id: int | str | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.provider_options = provider_options(providers, device_id)
        available = choose_providers(providers)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=[p for p in self.provider_options if p[0] in available])
        self.provider = self.session.get_providers()[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        log.info("ONNX model %s runs on %s", path, self.provider)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        check_images_and_masks(images, masks, channels=3)
        if images.shape[0] != masks.shape[0]:
            images = images.expand(masks.shape[0], -1, -1, -1)
        feeds = {"image": images.float().contiguous().numpy(), "mask": masks.float().contiguous().numpy()}
        (logits,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(np.asarray(logits))


def load_onnx_model(path: str | os.PathLike[str], providers: Sequence[str] = PREFERRED_PROVIDERS,
                    device_id: int | str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` whose layer-masked network is an exported ONNX file (``format: onnx``).

    Name, class names and preprocessing come from the file's metadata; ``device_id`` is the GPU for
    the CUDA and TensorRT providers (:func:`provider_options`).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ONNX model file not found: {file}")
    runtime = OnnxMaskedModel(file, providers, device_id=device_id)
    meta = runtime.metadata
    if "layermask.preprocessing" not in meta:
        raise ValueError(f"{file} was not exported by layermask (no layermask.* metadata)")
    preprocessing = Preprocessing.from_dict(json.loads(meta["layermask.preprocessing"]))
    return LoadedModel(meta["layermask.model"], None, preprocessing, json.loads(meta["layermask.class_names"]),
                       masked_runtime=runtime)
