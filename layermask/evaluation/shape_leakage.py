"""Experiment 4, mask-shape leakage: can a strategy recognise the object from the shape of the mask alone?

On each composite (:mod:`layermask.evaluation.composites`) every strategy scores three masks: the
object's own silhouette (only the object visible), the same silhouette rolled by half the image
size in both axes (the paper's "broken" mask: the object's outline, filled with whatever lies
there, mostly background texture) and the silhouette's complement (the object hidden, its outline
left as a hole). A strategy that still names the object through a broken mask or a hole reads the
class off the mask's shape rather than off visible pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from layermask.evaluation.common import EvaluationSettings, Section, strategies
from layermask.evaluation.composites import Composite, composites_for
from layermask.evaluation.localisation import Interval, bootstrap_interval
from layermask.evaluation.plots import bar_plot, new_figure, save_figure, strategy_legend
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.models.registry import LoadedModel

__all__ = ["CONDITIONS", "condition_masks", "leakage_sentence", "run"]

CONDITIONS = {
    "silhouette": "object only (its true silhouette visible)",
    "broken": "silhouette rolled by half the image (broken)",
    "hidden": "object hidden (silhouette as a hole)",
}
"""Mask condition → what it shows."""

LEAKAGE_MARGIN = 0.1
"""A strategy's broken-mask accuracy this far above layer masking's is called shape leakage in the text."""


def condition_masks(mask: np.ndarray) -> np.ndarray:
    """The masks of :data:`CONDITIONS` for an object ``mask`` (H×W bool), stacked (3×H×W uint8, 1 = visible)."""
    height, width = mask.shape
    rolled = np.roll(mask, (height // 2, width // 2), axis=(0, 1))
    return np.stack([mask, rolled, ~mask]).astype(np.uint8)


def leakage_sentence(accuracy: Mapping[str, Mapping[str, float]]) -> str:
    """What the broken-mask accuracies say, compared with the true silhouette's and with layer masking's."""
    broken, silhouette = accuracy["broken"], accuracy["silhouette"]
    layer = broken["layer"]
    leaking = [s for s in strategies() if s != "layer" and broken[s] >= layer + LEAKAGE_MARGIN]
    listed = ", ".join(f"{s} {broken[s]:.0%} (true silhouette {silhouette[s]:.0%})" for s in strategies())
    text = f"Through the broken (rolled) silhouette the object is still named at rates {listed}. "
    if leaking:
        return text + (f"{', '.join(leaking)} masking name{'s' if len(leaking) == 1 else ''} the object from the "
                       f"outline alone at least {LEAKAGE_MARGIN:.0%} more often than layer masking ({layer:.0%}): "
                       "the shape of the painted region carries class evidence, which is shape leakage.")
    return text + (f"No fill strategy exceeds layer masking ({layer:.0%}) by {LEAKAGE_MARGIN:.0%} or more, so these "
                   "composites show no more shape leakage for them than for layer masking.")


def run(model: LoadedModel, settings: EvaluationSettings, output: Path,
        progress: Callable[[str], None] | None = None) -> Section:
    """Experiment 4 on ``model``: accuracy per strategy and mask condition, a bar plot and the sentence on leakage."""
    started = time.perf_counter()
    composites = composites_for(model, settings, progress).composites
    hits = _hits(model, composites, settings.batch_size)  # strategy → composites × conditions
    results = {condition: {s: bootstrap_interval(hits[s][:, column], settings.bootstrap_resamples, settings.seed)
                           for s in strategies()} for column, condition in enumerate(CONDITIONS)}
    overlap = float(np.mean([(condition_masks(c.mask)[1] & c.mask).sum() / c.mask.sum() for c in composites]))
    output.mkdir(parents=True, exist_ok=True)
    figure = _plot(results, output / "shape_leakage.png")
    accuracy = {condition: {s: interval.mean for s, interval in by.items()} for condition, by in results.items()}
    sentence = leakage_sentence(accuracy)
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(f"shape leakage: {len(composites)} composites ({seconds:.0f} s)")
    summary = {"composites": len(composites), "broken_object_share": overlap,
               "accuracy": {c: {s: i.to_dict() for s, i in by.items()} for c, by in results.items()},
               "discussion": sentence, "seconds": seconds}
    return Section("Mask-shape leakage", _markdown(results, len(composites), overlap, sentence, figure.name, settings),
                   [figure], summary)


def _hits(model: LoadedModel, composites: list[Composite], batch_size: int) -> dict[str, np.ndarray]:
    """Per strategy: whether the top-1 class is one of the object's classes (composites × conditions, 0/1)."""
    tensors = [c.tensor(model.preprocessing) for c in composites]
    jobs = [ScoringJob(tensor, strategy, masks=condition_masks(c.mask))
            for strategy in strategies() for c, tensor in zip(composites, tensors)]
    probabilities = iter(score_jobs(model, jobs, batch_size))
    return {strategy: np.array([[float(int(label) in c.classes) for label in next(probabilities).argmax(axis=1)]
                                for c in composites]) for strategy in strategies()}


def _plot(results: Mapping[str, Mapping[str, Interval]], path: Path) -> Path:
    figure, (axes,) = new_figure(1, panel_size=(7.5, 3.8))
    groups = list(CONDITIONS)
    values = {s: [results[c][s].mean for c in groups] for s in strategies()}
    errors = {s: ([results[c][s].low for c in groups], [results[c][s].high for c in groups]) for s in strategies()}
    bar_plot(axes, ["object only", "broken (rolled)", "object hidden"], values, errors=errors,
             ylabel="accuracy (top-1 is the object)", xlabel="what the mask shows", ylim=(0.0, 1.0))
    strategy_legend(figure, strategies())
    return save_figure(figure, path)


def _markdown(results: Mapping[str, Mapping[str, Interval]], count: int, overlap: float, sentence: str,
              figure: str, settings: EvaluationSettings) -> str:
    lines = [
        f"The {count} composites of the localisation experiment, each scored under three masks per strategy: "
        + "; ".join(f"*{name}*: {text}" for name, text in CONDITIONS.items()) + ". The rolled mask is the object mask "
        f"shifted by half the height and half the width, wrapping round; on average {overlap:.0%} of the object's "
        "pixels stay visible through it. Accuracy: the top-1 class is one of the object's classes. Means with 95 % "
        f"percentile bootstrap intervals ({settings.bootstrap_resamples} resamples, seed {settings.seed}).",
        "",
        "| strategy | " + " | ".join(CONDITIONS) + " |",
        "|---" * (len(CONDITIONS) + 1) + "|",
    ]
    lines += [f"| {s} | " + " | ".join(str(results[c][s]) for c in CONDITIONS) + " |" for s in strategies()]
    lines += ["", f"![Accuracy per strategy and mask condition]({figure})", "", sentence]
    return "\n".join(lines)
