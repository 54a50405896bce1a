"""Experiment 1, influence of hidden content: does what lies under the mask change the output?

For each photo, mask fraction and random patch mask, the hidden pixels are replaced by uniform
noise or by another photo, and each strategy's logits for the original and the altered image
(under the same mask) are compared. Layer masking must not change at all: the run raises
:class:`InvarianceViolation` if its largest logit change is anything but exactly 0.0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layermask.evaluation.common import EvaluationSettings, Section, patch_grid, strategies
from layermask.evaluation.photos import Photo, load_photos
from layermask.evaluation.plots import line_plot, new_figure, save_figure, strategy_legend
from layermask.masking.strategies import cached_masker
from layermask.models.registry import LoadedModel

__all__ = ["REPLACEMENTS", "InvarianceViolation", "LogitChange", "logit_change", "random_cell_masks", "run"]

REPLACEMENTS = ("noise", "photo")
"""What the hidden pixels become: uniform RGB noise, or the same pixels of the next photo (of the photo
itself upside down when there is only one)."""


class InvarianceViolation(RuntimeError):
    """Layer masking's output changed when only hidden pixels changed (the paper's central claim failed)."""


@dataclass
class LogitChange:
    """How much logits moved between two runs: over all samples and classes, plus the top-1 flips."""

    max_abs: float = 0.0
    total_abs: float = 0.0
    values: int = 0
    top1_changed: int = 0
    samples: int = 0

    def add(self, reference: torch.Tensor, changed: torch.Tensor) -> None:
        delta = (changed.double() - reference.double()).abs()
        self.max_abs = max(self.max_abs, float(delta.max()))
        self.total_abs += float(delta.sum())
        self.values += delta.numel()
        self.top1_changed += int((changed.argmax(dim=1) != reference.argmax(dim=1)).sum())
        self.samples += len(reference)

    def to_dict(self) -> dict[str, float | int]:
        return {"max_abs_logit_change": self.max_abs, "mean_abs_logit_change": self.total_abs / max(self.values, 1),
                "top1_changed_share": self.top1_changed / max(self.samples, 1), "samples": self.samples}


def logit_change(reference: torch.Tensor, changed: torch.Tensor) -> LogitChange:
    """The :class:`LogitChange` between two N×C logit tensors."""
    change = LogitChange()
    change.add(reference, changed)
    return change


def random_cell_masks(count: int, cells: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` pixel masks (N×H×W float32, 1 = visible), each hiding ``round(fraction × S)`` random cells."""
    total = int(cells.max()) + 1
    keep = np.ones((count, total), dtype=np.float32)
    for row in keep:
        row[rng.permutation(total)[: round(fraction * total)]] = 0.0
    return keep[:, cells]


def _replacements(photo_index: int, photos: list[Photo], model: LoadedModel,
                  rng: np.random.Generator) -> dict[str, torch.Tensor]:
    height, width = model.input_size
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # the next photo; a lone photo stands in for another one upside down
    other = photos[(photo_index + 1) % len(photos)].pixels if len(photos) > 1 else photos[0].pixels[::-1]
    return {"noise": model.preprocessing.normalise(model.preprocessing.crop(noise)),
            "photo": model.preprocess(np.ascontiguousarray(other))}


def _batched_logits(masker: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: torch.Tensor,
                    masks: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Logits of ``images`` (N×3×H×W, or one image broadcast to every mask) under ``masks``, ``batch`` at a time."""
    outputs = [masker((images if len(images) == 1 else images[i : i + batch]).to(device),
                      masks[i : i + batch].to(device)) for i in range(0, len(masks), batch)]
    return torch.cat(outputs).float().cpu()


@torch.inference_mode()
def measure(model: LoadedModel, settings: EvaluationSettings,
            progress: Callable[[str], None] | None = None) -> dict[tuple[str, float, str], LogitChange]:
    """The logit changes per (strategy, fraction, replacement), over every photo and mask."""
    photos = load_photos(settings.photos)
    cells = patch_grid(model.input_size, settings.patch_size)
    changes: dict[tuple[str, float, str], LogitChange] = {}
    device = model.device
    for index, photo in enumerate(photos):
        rng = np.random.default_rng([settings.seed, 1, index])
        image = model.preprocess(photo.pixels).unsqueeze(0)
        contents = _replacements(index, photos, model, rng)
        masks = torch.from_numpy(np.concatenate([random_cell_masks(settings.influence_masks, cells, f, rng)
                                                 for f in settings.influence_fractions])).unsqueeze(1)
        fractions = np.repeat(settings.influence_fractions, settings.influence_masks)
        altered = {kind: image * masks + content * (1 - masks) for kind, content in contents.items()}
        for strategy in strategies():
            masker = cached_masker(strategy, model)
            reference = _batched_logits(masker, image, masks, settings.batch_size, device)
            for kind, images in altered.items():
                logits = _batched_logits(masker, images, masks, settings.batch_size, device)
                for fraction in settings.influence_fractions:
                    rows = torch.from_numpy(fractions == fraction)
                    changes.setdefault((strategy, fraction, kind), LogitChange()).add(reference[rows], logits[rows])
        if progress is not None:
            progress(f"influence: {photo.name} done ({index + 1}/{len(photos)})")
    for (strategy, fraction, kind), change in changes.items():
        if strategy == "layer" and change.max_abs != 0.0:
            raise InvarianceViolation(f"layer masking changed its logits by up to {change.max_abs:.3g} when the "
                                      f"hidden {fraction:.0%} of the image was replaced by {kind}")
    return changes


def run(model: LoadedModel, settings: EvaluationSettings, output: Path,
        progress: Callable[[str], None] | None = None) -> Section:
    """Experiment 1: measure, assert layer masking's invariance, and write the table and plot."""
    changes = measure(model, settings, progress)
    photos = load_photos(settings.photos)
    results = [{"strategy": s, "fraction": f, "replacement": r, **changes[s, f, r].to_dict()}
               for s in strategies() for f in settings.influence_fractions for r in REPLACEMENTS]
    figure = _plot(results, settings, output / "influence.png")
    summary: dict[str, Any] = {
        "photos": [p.name for p in photos], "fractions": list(settings.influence_fractions),
        "masks_per_fraction_and_photo": settings.influence_masks, "replacements": list(REPLACEMENTS),
        "strategies": list(strategies()), "results": results,
        "layer_invariance_held": all(r["max_abs_logit_change"] == 0.0 for r in results if r["strategy"] == "layer"),
    }
    markdown = _markdown(results, settings, photos, figure, model.num_classes)
    return Section("Influence of hidden content", markdown, [figure], summary)


def _plot(results: list[dict[str, Any]], settings: EvaluationSettings, path: Path) -> Path:
    figure, axes = new_figure(len(REPLACEMENTS))
    titles = {"noise": "hidden pixels replaced by noise", "photo": "hidden pixels replaced by another photo"}
    for ax, kind in zip(axes, REPLACEMENTS):
        rows = [r for r in results if r["replacement"] == kind]
        series = {s: [r["mean_abs_logit_change"] for r in rows if r["strategy"] == s] for s in strategies()}
        line_plot(ax, [100 * f for f in settings.influence_fractions], series, xlabel="image hidden (%)",
                  ylabel="mean |Δ logit|", title=titles[kind])
        ax.set_xlim(0, 100)
        zero = [s for s in strategies() if all(r["max_abs_logit_change"] == 0.0 for r in rows if r["strategy"] == s)]
        if zero:  # their lines lie on top of each other at 0
            ax.text(0.03, 0.95, f"exactly 0: {', '.join(zero)}", transform=ax.transAxes, va="top", fontsize=9)
    strategy_legend(figure, strategies())
    return save_figure(figure, path)


def _number(value: float) -> str:
    return "**0** (exact)" if value == 0.0 else f"{value:.3g}"


def _markdown(results: list[dict[str, Any]], settings: EvaluationSettings, photos: list[Photo], figure: Path,
              num_classes: int) -> str:
    samples = len(photos) * settings.influence_masks
    lines = [
        f"Each of {len(photos)} photos ({', '.join(p.name for p in photos)}) is masked with "
        f"{settings.influence_masks} random masks per fraction, each hiding that fraction of its "
        f"{settings.patch_size}×{settings.patch_size} cells; the hidden pixels are then replaced by uniform RGB "
        "noise or by the same pixels of the next photo, and the logits under the same mask are compared "
        f"({samples} masked images per row, {num_classes} logits each). Layer masking is asserted to change by "
        "exactly 0.",
        "",
        "| strategy | hidden | replaced by | max \\|Δ logit\\| | mean \\|Δ logit\\| | top-1 changed |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['strategy']} | {r['fraction']:.0%} | {r['replacement']} | "
                     f"{_number(r['max_abs_logit_change'])} | {_number(r['mean_abs_logit_change'])} | "
                     f"{r['top1_changed_share']:.1%} |")
    largest = {s: max(r["max_abs_logit_change"] for r in results if r["strategy"] == s) for s in strategies()}
    invariant = [s for s, value in largest.items() if value == 0.0]
    leaking = [f"{s} (up to {value:.3g})" for s, value in largest.items() if value != 0.0]
    lines += ["", f"![mean absolute logit change per strategy]({figure.name})", "",
              f"Exactly 0 everywhere: {', '.join(invariant) or 'none'}. Changed by hidden content: "
              f"{', '.join(leaking) or 'none'}. Grey and black masking overwrite the hidden pixels with a constant, "
              "so hidden content cannot reach the network through them either; what they add instead is the fill "
              "itself, whose effect experiment 2 measures. Blur masking fills the hole with a blurred copy of the "
              "image, which is made of the hidden pixels too, so they leak through it."]
    return "\n".join(lines)
