"""Shared fixtures: the real default model, and cached builders of seeded and layer-masked networks."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
from torch import nn

import layermask
from tests.helpers.networks import build_seeded_network


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
