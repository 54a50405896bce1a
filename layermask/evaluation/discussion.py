"""The report's generated discussion: sentences read off the sections' summaries, so they state what
this run measured, never a fixed conclusion. A human discussion of the committed full runs is
written beside it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from layermask.evaluation.common import EvaluationSettings, strategies

__all__ = ["discussion"]

Summaries = Mapping[str, Mapping[str, Any]]


def discussion(settings: EvaluationSettings, summaries: Summaries) -> str:
    """The discussion paragraphs for the sections present in ``summaries`` (keyed as in the report)."""
    paragraphs = ["*Generated from this run's numbers. The written discussion of the reports committed with layermask "
                  "is `docs/evidence/discussion.md` in its repository.*"]
    if "influence" in summaries:
        paragraphs.append(_influence(summaries["influence"]))
    if "patch_removal" in summaries:
        paragraphs.append(_patch_removal(summaries["patch_removal"]))
    if "localisation" in summaries:
        paragraphs.append(_localisation(summaries["localisation"]))
    if "shape_leakage" in summaries:
        paragraphs.append(f"**Mask shape.** {summaries['shape_leakage']['discussion']}")
    paragraphs.append(_limits(settings))
    return "\n\n".join(paragraphs)


def _ranked(values: Mapping[str, float], higher_is_better: bool) -> list[str]:
    return sorted(values, key=lambda s: -values[s] if higher_is_better else values[s])


def _spread(values: Mapping[str, float], spec: str, first: str, last: str, ascending: bool = False,
            unit: str = "") -> str:
    """"<first> a masking (v) and <last> b masking (w)", ties named together, or "v under every strategy"."""
    low, high = min(values.values()), max(values.values())
    if high - low <= 1e-12:
        return f"{format(high, spec)}{unit} under every strategy"

    def holders(target: float) -> str:
        names = [s for s, v in values.items() if abs(v - target) <= 1e-12]
        return f"{' and '.join(names)} masking ({format(target, spec)}{unit})"

    ends = (low, high) if ascending else (high, low)
    return f"{first} {holders(ends[0])} and {last} {holders(ends[1])}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _influence(summary: Mapping[str, Any]) -> str:
    results = summary["results"]
    largest = {s: max(r["max_abs_logit_change"] for r in results if r["strategy"] == s) for s in strategies()}
    leaking = [s for s in strategies() if largest[s] > 0]
    text = (f"**Hidden content.** Layer masking's logits did not move at all when the hidden pixels were replaced "
            f"(largest |Δ logit| exactly 0 over {len(results) // len(strategies())} fraction × replacement settings; "
            "the run asserts it).")
    if leaking:
        flips = {s: max(r["top1_changed_share"] for r in results if r["strategy"] == s) for s in leaking}
        moved = "; ".join(f"{s} masking's logits moved by up to {largest[s]:.3g} and its top-1 changed for up to "
                          f"{flips[s]:.0%} of the masked images" for s in leaking)
        text += f" {_sentence(moved)}."
    constant = [s for s in strategies() if s != "layer" and largest[s] == 0]
    if constant:
        text += (f" {' and '.join(constant).capitalize()} masking were also unmoved: they paint over the hidden "
                 "pixels, so their bias is in the paint, not in the hidden content.")
    return text


def _patch_removal(summary: Mapping[str, Any]) -> str:
    overall = summary["overall"]
    fractions = summary["fractions"]
    middle = min(range(len(fractions)), key=lambda i: abs(fractions[i] - 0.5))
    unchanged = {s: summary["curves"][s]["unchanged_top1_share"][middle] for s in strategies()}
    artifact = {s: overall[s]["artifact_rate"] for s in strategies()}
    kl = {s: overall[s]["mean_kl"] for s in strategies()}
    worst_artifact = _ranked(artifact, False)[-1]
    classes = ", ".join(c["name"] for c in summary["artifact_classes"][worst_artifact][:3]) or "none"
    text = (f"**Missingness bias.** With {fractions[middle]:.0%} of the image hidden, the unmasked top-1 survived "
            f"{_spread(unchanged, '.0%', 'most often under', 'least often under')}. Averaged over the fractions that "
            f"hide something, the artifact-class rate was {_spread(artifact, '.1%', 'highest for', 'lowest for')} "
            f"(the most frequent artifact classes under {worst_artifact} masking: {classes}); the mean KL divergence "
            f"from the unmasked prediction was {_spread(kl, '.3g', 'lowest for', 'highest for', True, ' nats')}.")
    accuracy = {s: summary["curves"][s]["label_accuracy"][middle] for s in strategies()}
    if None not in accuracy.values():
        text += (f" On the {len(summary['labelled_photos'])} labelled photos, top-1 accuracy against the true labels "
                 f"at {fractions[middle]:.0%} hidden was {_spread(accuracy, '.0%', 'highest for', 'lowest for')}.")
    best = {"unchanged top-1": max(unchanged, key=unchanged.__getitem__), "artifact rate": _ranked(artifact, False)[0],
            "KL": _ranked(kl, False)[0]}
    values = {"unchanged top-1": unchanged, "artifact rate": artifact, "KL": kl}
    beaten = [f"{metric} ({winner})" for metric, winner in best.items()
              if abs(values[metric][winner] - values[metric]["layer"]) > 1e-12]
    if beaten:
        text += f" Layer masking was beaten on: {', '.join(beaten)}."
    else:
        text += " Layer masking was best (or tied for best) on all three measures."
    return text


def _localisation(summary: Mapping[str, Any]) -> str:
    from layermask.evaluation.localisation import METRICS

    wins: dict[str, int] = dict.fromkeys(strategies(), 0)
    separated = 0
    cases = 0
    for metric, (_, higher) in METRICS.items():
        if metric.startswith("ablation") or metric not in summary.get("metrics", {}):
            continue
        for by_strategy in summary["metrics"][metric].values():
            means = {s: by_strategy[s]["mean"] for s in strategies()}
            best, second = _ranked(means, higher)[:2]
            wins[best] += 1
            cases += 1
            low, high = by_strategy[best]["low"], by_strategy[best]["high"]
            other = by_strategy[second]
            separated += int(other["high"] < low or other["low"] > high)
    if not cases:
        return "**Localisation.** No localisation metrics were recorded."
    tally = ", ".join(f"{s} {n}" for s, n in sorted(wins.items(), key=lambda item: -item[1]) if n)
    return (f"**Localisation.** Over {cases} metric × segmentation cells (cosine, Jaccard, pointing game), the best "
            f"mean went to: {tally}. In {separated} of them the 95 % intervals of the winner and the "
            "runner-up do not overlap; elsewhere the strategies are not separated at this sample size.")


def _limits(settings: EvaluationSettings) -> str:
    text = ("**Limits.** A handful of photos and composites shipped with scikit-image and scikit-learn stand in for "
            "the paper's ImageNet validation runs; the accuracy against true labels rests on the few photos with an "
            "honest ImageNet label; one seed; one network per report. Differences smaller than the intervals are not "
            "findings.")
    if settings.quick:
        text += " This is a quick run: its counts are far too small to support any conclusion."
    return text
