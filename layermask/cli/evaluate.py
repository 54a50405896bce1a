"""``layermask evaluate``: the evidence report (:mod:`layermask.evaluation.report`) from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from layermask.models.registry import DEFAULT_MODEL

__all__ = ["add_evaluate_command", "run_evaluate"]

DEFAULT_OUTPUT = Path("docs/evidence")


def add_evaluate_command(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="measure layer, grey, black and blur masking on real photos; write a report with plots",
        description="Run the evidence experiments (influence of hidden content, patch removal, LIME localisation, "
                    "mask-shape leakage) and write README.md, summary.json and PNG plots into the output directory. "
                    "Finished sections are cached there, so an interrupted run resumes.")
    evaluate.add_argument("--quick", action="store_true", help="small sample counts (a smoke test, minutes)")
    evaluate.add_argument("--model", default=DEFAULT_MODEL)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--fresh", action="store_true", help="ignore cached sections and recompute everything")
    evaluate.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}/")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, for the report."""
    quick = " --quick" if args.quick else ""
    return f"layermask evaluate{quick} --model {args.model} --seed {args.seed} -o {args.output}"


def run_evaluate(args: argparse.Namespace) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("layermask evaluate draws its plots with matplotlib: pip install 'layermask[plot]'") from None
    from layermask.evaluation.common import EvaluationSettings
    from layermask.evaluation.influence import InvarianceViolation
    from layermask.evaluation.report import write_report

    started = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    settings = EvaluationSettings.for_run(args.quick, args.seed)
    try:
        readme = write_report(args.model, settings, args.output, fresh=args.fresh, command=command_line(args),
                              progress=progress)
    except InvarianceViolation as error:
        raise ValueError(f"invariance assertion failed: {error}") from error
    print(f"wrote {readme}")
