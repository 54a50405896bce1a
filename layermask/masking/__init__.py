"""Masking strategies: how hidden pixels are removed (``layer``) or painted over (``grey``, ``black``, ``blur``)."""

from layermask.masking.masks import random_patch_masks
from layermask.masking.names import DEFAULT_MASKING, MASKING_STRATEGIES
from layermask.masking.strategies import Masker, cached_masker, get_masker

__all__ = ["DEFAULT_MASKING", "MASKING_STRATEGIES", "Masker", "cached_masker", "get_masker", "random_patch_masks"]
