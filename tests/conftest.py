"""Shared fixtures: the real default model, and cached builders of seeded and layer-masked networks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import layermask
from tests.helpers.networks import build_seeded_network


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``gpu``-marked tests where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_model() -> layermask.LoadedModel:
    return layermask.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def seeded_network() -> Callable[[str], nn.Module]:
    """``seeded_network(name)``: the eval-mode network ``name`` with seeded weights, built once per session."""
    return functools.cache(build_seeded_network)


@pytest.fixture(scope="session")
def converted(seeded_network: Callable[[str], nn.Module]) -> Callable[[str], layermask.LayerMaskedModel]:
    """``converted(name)``: the layer-masked version of ``seeded_network(name)``, converted once per session."""

    @functools.cache
    def convert(name: str) -> layermask.LayerMaskedModel:
        return layermask.layer_mask(seeded_network(name))

    return convert


@pytest.fixture
def exact_cuda() -> Iterator[None]:
    """Full float32 on CUDA (no TF32), so that CUDA and CPU agree to float32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
