"""The ``layermask`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from layermask.models import DEFAULT_MODEL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layermask", description="Layer-masked LIME explanations for image CNNs.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="hide half of a photo and compare masking strategies")
    demo.add_argument("--model", default=DEFAULT_MODEL)
    demo.add_argument("-o", "--output", type=Path, default=Path("demo.png"))
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from layermask.demo import run_demo

            run_demo(args.model, args.output, args.seed)
    except (ValueError, KeyError, FileNotFoundError, OSError) as error:
        print(f"layermask: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
