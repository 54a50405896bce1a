"""The README's pictures: an explanation on the full-resolution photo, and the strategies side by side.

    .venv/bin/python docs/figures.py      # writes docs/chelsea_overlay.png and docs/chelsea_strategies.png

A real run of EfficientNet-Lite0 on skimage's ``chelsea`` (451×300) at 300 samples, the code of
the README's Python example.
"""

from __future__ import annotations

from pathlib import Path

from skimage import data

import layermask

HERE = Path(__file__).resolve().parent


def main() -> None:
    model = layermask.load_model("efficientnet_lite0")
    photo = data.chelsea()
    explanations = [layermask.explain(model, photo, masking=masking, num_samples=300, seed=0)
                    for masking in ("layer", "grey", "blur")]
    explanations[0].overlay(on="original").save(HERE / "chelsea_overlay.png")
    figure = layermask.plot(explanations, on="original")
    figure.savefig(HERE / "chelsea_strategies.png", dpi=100)
    for explanation in explanations:
        print(repr(explanation))


if __name__ == "__main__":
    main()
