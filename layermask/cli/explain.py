"""``layermask explain``: explain one image from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from layermask.explanation.options import AUTO, METHODS, AdaptiveSampling, ExplainOptions, OcclusionWindow
from layermask.explanation.segmentation import SEGMENTATIONS
from layermask.masking.names import DEFAULT_MASKING, MASKING_STRATEGIES
from layermask.models.registry import DEFAULT_MODEL

__all__ = ["ProgressBar", "add_explain_command", "parse_segmentation", "run_explain"]

_DEFAULTS = ExplainOptions()
_ADAPTIVE = AdaptiveSampling()
_OCCLUSION = OcclusionWindow()


def _samples(text: str) -> int | str:
    """``--samples``: an integer or ``auto``; anything else goes on to be refused by :class:`ExplainOptions`."""
    try:
        return int(text)
    except ValueError:
        return text


def add_explain_command(commands: Any) -> None:
    """``layermask explain``; its options' defaults are :class:`ExplainOptions`'s, and it checks none of them."""
    explain = commands.add_parser("explain", help="explain a prediction with layer-masked LIME, KernelSHAP or "
                                                   "occlusion")
    explain.add_argument("image", type=Path, help="PNG, JPEG or WebP file")
    explain.add_argument("--model", default=DEFAULT_MODEL)
    explain.add_argument("--weights", type=Path, help="local state-dict file (torchvision architectures)")
    explain.add_argument("--method", choices=METHODS, default=_DEFAULTS.method)
    explain.add_argument("--masking", choices=MASKING_STRATEGIES, default=DEFAULT_MASKING)
    explain.add_argument("--segmentation", default=_DEFAULTS.segmentation_method, metavar="METHOD[:k=v,...]",
                         help=f"one of {', '.join(SEGMENTATIONS)} with optional parameters, "
                              "e.g. slic:n_segments=50,compactness=10")
    explain.add_argument("--segments-file", type=Path,
                         help="a .npy integer label map at the model's input size or at the image's")
    explain.add_argument("--max-segments", type=int, default=_DEFAULTS.max_segments)
    explain.add_argument("--samples", type=_samples, default=_DEFAULTS.num_samples,
                         help=f"perturbations to score (lime, kernel_shap), or {AUTO!r} to stop when the weights "
                              "settle")
    explain.add_argument("--tolerance", type=float, default=_ADAPTIVE.tolerance,
                         help="--samples auto: the cosine similarity between successive fits that counts as settled")
    explain.add_argument("--max-samples", type=int, default=_ADAPTIVE.max_samples,
                         help="--samples auto: the most perturbations to score")
    explain.add_argument("--window", type=int, default=_OCCLUSION.window,
                         help="occlusion: the square window's side, in pixels of the model's input crop")
    explain.add_argument("--stride", type=int, default=_OCCLUSION.stride, help="occlusion: the window's step")
    explain.add_argument("--keep-probability", type=float, default=_DEFAULTS.keep_probability)
    explain.add_argument("--kernel-width", type=float, default=_DEFAULTS.kernel_width)
    explain.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    explain.add_argument("--batch-size", type=int)
    labels = explain.add_mutually_exclusive_group()
    labels.add_argument("--label", type=int, action="append", help="explain this class index (repeatable)")
    labels.add_argument("--top-labels", type=int, default=_DEFAULTS.top_labels)
    explain.add_argument("-o", "--output", type=Path, required=True,
                         help="PNG overlay to write, on the photo at its resolution (outside the crop greyed out)")
    explain.add_argument("--crop", action="store_true", help="draw the overlay on the model's input crop instead")
    explain.add_argument("--json", type=Path, help="also write the explanation as JSON")
    explain.add_argument("--no-progress", action="store_true")


def parse_segmentation(text: str) -> tuple[str, dict[str, str]]:
    """``"slic:n_segments=50,compactness=10"`` → ``("slic", {"n_segments": "50", ...})``."""
    method, _, rest = text.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"segmentation parameter {item!r} is not key=value")
        params[key.strip()] = value.strip()
    return method.strip(), params


class ProgressBar:
    """A one-line progress bar on a terminal stream."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.open = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // max(total, 1)
        self.open = done < total
        end = "" if self.open else "\n"
        self.stream.write(f"\rsampling [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}{end}")
        self.stream.flush()

    def close(self) -> None:
        """End the line of a bar that stopped short of its total (``--samples auto`` that converged)."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def explain_options(args: argparse.Namespace) -> ExplainOptions:
    """The :class:`ExplainOptions` of the command line (``InvalidOptionError`` names a bad one)."""
    segmentation: str | np.ndarray
    params: dict[str, str] = {}
    if args.segments_file is not None:
        if not args.segments_file.is_file():
            raise FileNotFoundError(f"segments file not found: {args.segments_file}")
        segmentation = np.load(args.segments_file, allow_pickle=False)
    else:
        segmentation, params = parse_segmentation(args.segmentation)
    return ExplainOptions(
        method=args.method, masking=args.masking,
        segmentation=segmentation, segmentation_params=params, max_segments=args.max_segments,
        num_samples=args.samples, keep_probability=args.keep_probability, kernel_width=args.kernel_width,
        labels=args.label, top_labels=args.top_labels, seed=args.seed, batch_size=args.batch_size,
        adaptive=AdaptiveSampling(tolerance=args.tolerance, max_samples=args.max_samples),
        occlusion=OcclusionWindow(args.window, args.stride),
    )


def run_explain(args: argparse.Namespace) -> None:
    from layermask.explanation.lime import explain
    from layermask.models.images import load_image
    from layermask.models.registry import load_model

    image = load_image(args.image)
    options = explain_options(args)  # before the slow model load
    model = load_model(args.model, args.weights)
    bar = None if args.no_progress else ProgressBar()
    try:
        explanation = explain(model, image, options, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    print("top predictions:")
    for prediction in explanation.top_predictions:
        print(f"  {prediction.label:4d} {prediction.name:<30} {prediction.probability:7.2%}")
    converged = {None: "", True: ", converged", False: ", not converged"}[explanation.converged]
    print(f"{explanation.method}: {explanation.num_samples} samples{converged}, {explanation.num_segments} segments")
    for label, result in explanation.explanations.items():
        print(f"label {label} ({result.name}): R² {result.score:.3f}, local prediction {result.local_prediction:.3f}")
        for segment, weight in explanation.top_segments(label, k=5):
            print(f"  segment {segment:4d} weight {weight:+.4f}")
    explanation.save_png(args.output, on="crop" if args.crop else "original")
    print(f"wrote {args.output}")
    if args.json is not None:
        explanation.to_json(args.json)
        print(f"wrote {args.json}")
