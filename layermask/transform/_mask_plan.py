"""The mask side of a layer-masked graph: every mask computation, emitted once."""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx

from layermask.transform._elementwise_ops import mask_product
from layermask.transform._fill_ops import mask_fill_step
from layermask.transform._pad_ops import Pad
from layermask.transform._window_ops import mask_max_pool


class MaskPlan:
    """Emits mask-only computations into the new graph, each distinct one exactly once.

    It also knows when two mask nodes must hold the same values: a centred stride-``s`` max-pool of
    ``m`` is ≥ the stride-``s`` subsample of ``m`` everywhere, so their product *is* that subsample.
    Residual and dense connections then keep sharing one mask per resolution, and with it the fill
    coefficients, instead of starting a new chain at every block.
    """

    def __init__(self, graph: fx.Graph) -> None:
        self._graph = graph
        self._emitted: dict[tuple[Any, ...], fx.Node] = {}
        self._fill_steps: dict[fx.Node, tuple[list[fx.Node], fx.Node]] = {}
        self._identity: dict[fx.Node, Any] = {}  # subsample nodes -> ("subsample", source, stride)
        self._covers: dict[fx.Node, set[Any]] = {}  # node -> identities of masks it is >= everywhere

    def call(self, fn: Any, *args: Any) -> fx.Node:
        key = (fn, *args)
        if key not in self._emitted:
            self._emitted[key] = self._graph.call_function(fn, args)
        return self._emitted[key]

    def item(self, node: fx.Node, index: int) -> fx.Node:
        return self.call(operator.getitem, node, index)

    def fill_coefficients(self, mask: fx.Node, iterations: int) -> tuple[fx.Node, ...]:
        coefficients, grown = self._fill_steps.get(mask, ([], mask))
        while len(coefficients) < iterations:
            step = self.call(mask_fill_step, grown)
            coefficients.append(self.item(step, 0))
            grown = self.item(step, 1)
        self._fill_steps[mask] = (coefficients, grown)
        return tuple(coefficients[:iterations])

    def window(self, mask: fx.Node, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], ceil_mode: bool, pre_pad: Pad | None) -> fx.Node:
        """Output mask of a window operation (conv or max-pool) on ``mask``."""
        pointwise = pre_pad is None and kernel == (1, 1) and padding == (0, 0) and not ceil_mode
        if pointwise and stride == (1, 1):
            return mask
        node = self.call(mask_max_pool, mask, kernel, stride, padding, dilation, ceil_mode, pre_pad)
        if pointwise:
            self._identity[node] = ("subsample", mask, stride)
        elif pre_pad is None and not ceil_mode and all(
            k % 2 == 1 and p == d * (k - 1) // 2 for k, p, d in zip(kernel, padding, dilation)
        ):
            centre = self._identity.get(mask, mask) if stride == (1, 1) else ("subsample", mask, stride)
            self._covers[node] = {centre} | (self._covers.get(mask, set()) if stride == (1, 1) else set())
        return node

    def product(self, *masks: fx.Node) -> fx.Node:
        distinct = set(masks)
        redundant = {b for b in distinct for a in distinct
                     if a is not b and self._identity.get(a, a) in self._covers.get(b, ())}
        kept = sorted(distinct - redundant, key=lambda n: n.name)
        return kept[0] if len(kept) == 1 else self.call(mask_product, *kept)
