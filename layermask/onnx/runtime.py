"""Running an exported layer-masked model with ONNX Runtime, behind the same call as the PyTorch one."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision.transforms.functional as TF

from layermask.models.preprocessing import Preprocessing
from layermask.models.registry import LoadedModel
from layermask.transform.inputs import check_images_and_masks

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
log = logging.getLogger("layermask.onnx")


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

    :attr:`provider` is the execution provider that ONNX Runtime actually uses.
    """

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] = PREFERRED_PROVIDERS,
                 threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=choose_providers(providers))
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


def load_onnx_model(path: str | os.PathLike[str], providers: Sequence[str] = PREFERRED_PROVIDERS) -> LoadedModel:
    """A :class:`LoadedModel` whose layer-masked network is an exported ONNX file (``format: onnx``).

    Name, class names and preprocessing come from the file's metadata.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ONNX model file not found: {file}")
    runtime = OnnxMaskedModel(file, providers)
    meta = runtime.metadata
    if "layermask.models.preprocessing" not in meta:
        raise ValueError(f"{file} was not exported by layermask (no layermask.* metadata)")
    p = json.loads(meta["layermask.models.preprocessing"])
    preprocessing = Preprocessing(input_size=tuple(p["input_size"]), resize_size=p["resize_size"],
                                  mean=tuple(p["mean"]), std=tuple(p["std"]),
                                  interpolation=TF.InterpolationMode(p["interpolation"]))
    return LoadedModel(meta["layermask.model"], None, preprocessing, json.loads(meta["layermask.class_names"]),
                       masked_runtime=runtime)
