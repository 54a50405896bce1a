"""The masking demo: one photo, half of it hidden, top-5 predictions under each strategy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage import data

from layermask.masking.masks import random_patch_masks
from layermask.masking.strategies import MASKING_STRATEGIES, get_masker
from layermask.models.registry import DEFAULT_MODEL, LoadedModel, load_model

__all__ = ["run_demo", "top_predictions"]

Predictions = dict[str, list[tuple[str, float]]]


def top_predictions(model: LoadedModel, logits: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
    probabilities = logits.softmax(dim=-1)
    values, indices = probabilities.topk(k)
    return [(model.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def run_demo(model_name: str = DEFAULT_MODEL, output: Path = Path("demo.png"), seed: int = 0) -> Predictions:
    """Hide 50 % of skimage's ``chelsea`` in random 16×16 patches and compare the strategies."""
    model = load_model(model_name)
    crop = model.preprocessing.crop(data.chelsea())
    image = model.preprocessing.normalise(crop).unsqueeze(0)
    mask = random_patch_masks(1, model.input_size, patch=16, hidden_fraction=0.5, seed=seed)
    predictions = {name: top_predictions(model, get_masker(name, model)(image, mask)[0])
                   for name in MASKING_STRATEGIES}
    print(format_table(predictions))
    render(crop, mask[0, 0].numpy(), predictions).save(output)
    print(f"wrote {output}")
    return predictions


def format_table(predictions: Predictions) -> str:
    names = list(predictions)
    width = 34
    lines = ["rank  " + "".join(f"{n:<{width}}" for n in names)]
    for rank in range(len(next(iter(predictions.values())))):
        cells = [f"{label[:24]} {p:6.1%}" for label, p in (predictions[n][rank] for n in names)]
        lines.append(f"{rank + 1:<6}" + "".join(f"{c:<{width}}" for c in cells))
    return "\n".join(lines)


def render(crop: Image.Image, mask: np.ndarray, predictions: Predictions) -> Image.Image:
    """The image with hidden patches shown hatched, next to the predictions of each strategy."""
    pixels = np.asarray(crop, dtype=np.float32)
    hatch = ((np.add.outer(np.arange(mask.shape[0]), np.arange(mask.shape[1])) // 4) % 2) * 60 + 100
    shown = np.where(mask[..., None] > 0, pixels, hatch[..., None]).astype(np.uint8)
    font = ImageFont.load_default(size=14)
    panel = Image.new("RGB", (shown.shape[1] + 20 + 240 * len(predictions), max(shown.shape[0], 130) + 40), "white")
    panel.paste(Image.fromarray(shown), (10, 30))
    draw = ImageDraw.Draw(panel)
    draw.text((10, 8), "input, 50% hidden", fill="black", font=font)
    for column, (name, top) in enumerate(predictions.items()):
        x = shown.shape[1] + 20 + 240 * column
        draw.text((x, 8), f"{name} masking", fill="black", font=font)
        for rank, (label, probability) in enumerate(top):
            draw.text((x, 34 + 20 * rank), f"{probability:5.1%}  {label[:22]}", fill="black", font=font)
    return panel
