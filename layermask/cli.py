"""The ``layermask`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from layermask.cli_explain import add_explain_command, run_explain
from layermask.models import DEFAULT_MODEL


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit status 2, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="layermask", description="Layer-masked LIME explanations for image CNNs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_explain_command(commands)
    demo = commands.add_parser("demo", help="hide half of a photo and compare masking strategies")
    demo.add_argument("--model", default=DEFAULT_MODEL)
    demo.add_argument("-o", "--output", type=Path, default=Path("demo.png"))
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "explain":
            run_explain(args)
        elif args.command == "demo":
            from layermask.demo import run_demo

            run_demo(args.model, args.output, args.seed)
    except (ValueError, KeyError, FileNotFoundError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"layermask: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layermask: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
