"""Scoring masked images: the class probabilities a model gives an image under masks.

A :class:`ScoringJob` is one image with the masks to apply to it (keep-matrix rows over a segment
map, as LIME samples them, or explicit pixel masks), a masking strategy and the labels whose
probabilities are wanted. :func:`score_jobs` runs any number of jobs, of different images and
strategies, through shared forward passes of at most ``max_rows`` rows, and builds the masks of
one pass at a time, so memory does not grow with the number of rows. Masks are built, and images
moved, on the model's device (:attr:`~layermask.models.LoadedModel.device`); only the probabilities
come back to the CPU.

A :data:`Scorer` turns one job into probabilities. :class:`LocalScorer` computes them in this
process; a serving backend can supply one that computes them elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from layermask.masking.strategies import MASKING_STRATEGIES, cached_masker
from layermask.models.registry import LoadedModel

__all__ = ["LocalScorer", "Scorer", "ScoringJob", "rows_to_masks", "score_jobs"]


def rows_to_masks(rows: np.ndarray, segments: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel masks (B×1×H×W, 1 = visible) for keep-matrix rows over a segment label map, on ``segments``' device."""
    return torch.from_numpy(rows).to(segments.device, dtype)[:, segments].unsqueeze(1)


@dataclass(frozen=True)
class ScoringJob:
    """Masked copies of one image to score.

    ``image`` is the normalised 1×3×H×W model input. The masks are either ``rows`` (R×S, 0/1) over
    ``segments`` (H×W labels 0…S-1), or explicit ``masks`` (R×H×W, 0/1, 1 = visible). ``labels``
    are the classes whose probabilities are returned, in that order; ``None`` means all classes.
    """

    image: torch.Tensor
    masking: str
    segments: np.ndarray | None = None
    rows: np.ndarray | None = None
    masks: np.ndarray | None = None
    labels: tuple[int, ...] | None = None

    @property
    def num_rows(self) -> int:
        source = self.rows if self.rows is not None else self.masks
        return 0 if source is None else len(source)

    def check(self, input_size: tuple[int, int], num_classes: int) -> None:
        """Raise ``ValueError``, naming the field, unless the job fits a model of this input size and class count."""
        if self.masking not in MASKING_STRATEGIES:
            raise ValueError(f"masking: unknown strategy {self.masking!r}; "
                             f"choose one of {', '.join(MASKING_STRATEGIES)}")
        if tuple(self.image.shape) != (1, 3, *input_size):
            raise ValueError(f"image: expected shape 1×3×{input_size[0]}×{input_size[1]}, "
                             f"got {tuple(self.image.shape)}")
        if (self.rows is None) == (self.masks is None) or (self.rows is None) != (self.segments is None):
            raise ValueError("masks: give either keep rows with segments, or explicit masks")
        if self.rows is not None and self.segments is not None:
            if self.segments.shape != tuple(input_size):
                raise ValueError(f"segments: shape {self.segments.shape} is not the input size {tuple(input_size)}")
            count = int(self.segments.max()) + 1
            if self.segments.min() < 0 or self.rows.ndim != 2 or self.rows.shape[1] != count:
                raise ValueError(f"keep: rows must be R×{count} for labels 0…{count - 1}, got shape {self.rows.shape}")
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[1:] != tuple(input_size)):
            raise ValueError(f"masks: expected R×{input_size[0]}×{input_size[1]}, got shape {self.masks.shape}")
        if self.num_rows < 1:
            raise ValueError("keep: at least one row is needed")
        if self.labels is not None:
            bad = [label for label in self.labels if not 0 <= label < num_classes]
            if bad:
                raise ValueError(f"labels: {bad} out of range for a model with {num_classes} classes")

    def mask_rows(self, start: int, stop: int, dtype: torch.dtype,
                  device: torch.device | str = "cpu") -> torch.Tensor:
        """The pixel masks of rows ``start:stop`` (B×1×H×W), built on ``device``."""
        if self.rows is not None and self.segments is not None:
            segments = torch.from_numpy(self.segments).to(device, torch.long)
            return rows_to_masks(self.rows[start:stop], segments, dtype)
        assert self.masks is not None
        return torch.from_numpy(np.ascontiguousarray(self.masks[start:stop])).to(device, dtype).unsqueeze(1)


Scorer = Callable[[ScoringJob], np.ndarray]
"""``job -> probabilities`` (rows × labels, float64)."""

_Piece = tuple[int, int, int]  # (job index, first row, end row) within one forward pass


def _passes(jobs: Sequence[ScoringJob], indices: Sequence[int], max_rows: int) -> list[list[_Piece]]:
    """Split the rows of ``jobs[indices]``, in order, into forward passes of at most ``max_rows`` rows."""
    passes: list[list[_Piece]] = [[]]
    room = max_rows
    for index in indices:
        start, total = 0, jobs[index].num_rows
        while start < total:
            if room == 0:
                passes.append([])
                room = max_rows
            stop = min(total, start + room)
            passes[-1].append((index, start, stop))
            room -= stop - start
            start = stop
    return [p for p in passes if p]


def score_jobs(model: LoadedModel, jobs: Sequence[ScoringJob], max_rows: int,
               on_forward: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Class probabilities (rows × labels, float64) for each job, sharing forward passes between jobs.

    Jobs with the same masking strategy share passes of at most ``max_rows`` rows; a pass that holds
    rows of several images gives each row its own image. ``on_forward(rows)`` is called after each
    pass. Jobs are expected to have passed :meth:`ScoringJob.check`.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    outputs = [np.empty((job.num_rows, model.num_classes if job.labels is None else len(job.labels)))
               for job in jobs]
    device = model.device
    for masking in dict.fromkeys(job.masking for job in jobs):
        masker = cached_masker(masking, model)
        indices = [i for i, job in enumerate(jobs) if job.masking == masking]
        for pieces in _passes(jobs, indices, max_rows):
            first = jobs[pieces[0][0]].image
            dtype = first.dtype
            masks = torch.cat([jobs[i].mask_rows(start, stop, dtype, device) for i, start, stop in pieces])
            if all(jobs[i].image is first for i, _, _ in pieces):
                images = first.to(device)  # broadcast over the pass, as a single LIME run does
            else:
                images = torch.cat([jobs[i].image.to(device).expand(stop - start, -1, -1, -1)
                                    for i, start, stop in pieces])
            probabilities = masker(images, masks).softmax(dim=-1).cpu()
            offset = 0
            for i, start, stop in pieces:
                block = probabilities[offset : offset + stop - start]
                labels = jobs[i].labels
                if labels is not None:
                    block = block[:, list(labels)]
                outputs[i][start:stop] = block.double().numpy()
                offset += stop - start
            if on_forward is not None:
                on_forward(len(masks))
    return outputs


class LocalScorer:
    """Scores jobs with ``model`` in this process, ``max_rows`` rows per forward pass."""

    def __init__(self, model: LoadedModel, max_rows: int) -> None:
        self.model = model
        self.max_rows = max_rows

    def __call__(self, job: ScoringJob) -> np.ndarray:
        return score_jobs(self.model, [job], self.max_rows)[0]
