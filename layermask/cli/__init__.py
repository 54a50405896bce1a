"""The ``layermask`` command line of the core library (``explain``, ``export-onnx``, ``demo``, ``evaluate``).

The installed ``layermask`` command adds the service's commands to these
(``layermask_service.cli``); ``python -m layermask`` runs the core alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from layermask.allocator import keep_freed_memory
from layermask.cli.evaluate import add_evaluate_command, run_evaluate
from layermask.cli.explain import add_explain_command, run_explain
from layermask.errors import UnsupportedLayerError
from layermask.models.registry import DEFAULT_MODEL

__all__ = ["Parser", "build_parser_with_commands", "guarded", "main", "run"]


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit status 2, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser_with_commands() -> tuple[argparse.ArgumentParser, Any]:
    """The parser and its subcommand collection, for callers that add commands of their own."""
    parser = Parser(prog="layermask", description="Layer-masked LIME explanations for image CNNs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_explain_command(commands)
    export = commands.add_parser("export-onnx", help="export the layer-masked model to ONNX")
    export.add_argument("--model", default=DEFAULT_MODEL)
    export.add_argument("--weights", type=Path)
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--fp16", action="store_true", help="float16 weights and compute (float32 inputs/outputs)")
    demo = commands.add_parser("demo", help="hide half of a photo and compare masking strategies")
    demo.add_argument("--model", default=DEFAULT_MODEL)
    demo.add_argument("-o", "--output", type=Path, default=Path("demo.png"))
    demo.add_argument("--seed", type=int, default=0)
    add_evaluate_command(commands)
    return parser, commands


def guarded(command: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a command; expected failures become one line on stderr and exit status 2, never a traceback."""
    try:
        command(args)
    except (ValueError, KeyError, FileNotFoundError, OSError, UnsupportedLayerError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"layermask: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layermask: interrupted", file=sys.stderr)
        return 130
    return 0


def _run_demo(args: argparse.Namespace) -> None:
    from layermask.cli.demo import run_demo

    run_demo(args.model, args.output, args.seed)


def _run_export(args: argparse.Namespace) -> None:
    from layermask.models.registry import load_model
    from layermask.onnx.export import export_onnx

    path = export_onnx(load_model(args.model, args.weights), args.output, opset=args.opset, fp16=args.fp16)
    print(f"wrote {path}")


def run(args: argparse.Namespace) -> int:
    commands = {"explain": run_explain, "demo": _run_demo, "export-onnx": _run_export, "evaluate": run_evaluate}
    keep_freed_memory()
    return guarded(commands[args.command], args)


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser_with_commands()
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
