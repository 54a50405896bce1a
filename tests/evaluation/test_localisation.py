"""Experiment 3: the localisation metrics on known cases, the composites, and a quick run on EfficientNet-Lite0."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torchvision.transforms.functional as TF

import layermask
from layermask.evaluation import localisation
from layermask.evaluation.common import EvaluationSettings, strategies
from layermask.evaluation.composites import OBJECTS, build_composites, canvas_shape, draw_candidate
from layermask.evaluation.localisation import (
    bootstrap_interval,
    cosine_similarity,
    ground_truth_segments,
    jaccard_index,
    pointing_hit,
    segment_ground_truth,
    top_segments,
)
from layermask.models.preprocessing import Preprocessing

SEGMENTS = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
# segment 0 fully object, segment 3 half object
MASK = np.array([[True, True, False, False], [False, False, True, False]])


def test_per_segment_ground_truth_is_object_pixels_minus_their_mean() -> None:
    np.testing.assert_allclose(segment_ground_truth(SEGMENTS, MASK), [2 - 0.75, -0.75, -0.75, 1 - 0.75])


def test_a_segment_is_ground_truth_from_half_object_pixels_on() -> None:
    assert ground_truth_segments(SEGMENTS, MASK).tolist() == [True, False, False, True]
    assert ground_truth_segments(SEGMENTS, MASK, share=0.6).tolist() == [True, False, False, False]


def test_cosine_similarity() -> None:
    a = np.array([1.0, 2.0, 0.0])
    assert cosine_similarity(a, 3 * a) == pytest.approx(1.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert cosine_similarity(a, np.array([0.0, 0.0, 5.0])) == pytest.approx(0.0)
    assert cosine_similarity(a, np.zeros(3)) == 0.0
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(1 / np.sqrt(2))


def test_top_segments_jaccard_and_pointing() -> None:
    weights = np.array([0.5, 0.9, 0.1, 0.9, -1.0, 0.2])
    assert top_segments(weights, 3).tolist() == [1, 3, 0]  # the tie keeps the lower index first
    truth = np.array([False, True, True, True, True, False])
    assert jaccard_index(top_segments(weights, 3), truth) == pytest.approx(2 / 5)
    assert jaccard_index(np.array([1, 2, 3, 4]), truth) == 1.0
    assert pointing_hit(weights, truth)
    assert not pointing_hit(weights, ~truth)


def test_bootstrap_interval_on_known_cases() -> None:
    constant = bootstrap_interval(np.full(10, 0.3), 500, seed=0)
    assert (constant.mean, constant.low, constant.high) == pytest.approx((0.3, 0.3, 0.3))
    coin = np.array([0.0, 1.0] * 200)  # mean 0.5, standard error 0.025
    interval = bootstrap_interval(coin, 4000, seed=1)
    assert interval.mean == 0.5
    assert interval.low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert interval.high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert bootstrap_interval(coin, 4000, seed=1) == interval
    with pytest.raises(ValueError):
        bootstrap_interval(np.array([]), 10, seed=0)


# EfficientNet-Lite2's sizes: the canvas must still be cropped pixel for pixel
LITE2_SIZES = Preprocessing((260, 260), 292, interpolation=TF.InterpolationMode.BICUBIC)


@pytest.mark.parametrize("preprocessing", [Preprocessing(), LITE2_SIZES])
def test_a_composite_is_deterministic_and_its_mask_is_where_the_object_went(preprocessing: Preprocessing) -> None:
    texture, photo, mask = draw_candidate(np.random.default_rng(7), OBJECTS[0], preprocessing)
    again = draw_candidate(np.random.default_rng(7), OBJECTS[0], preprocessing)
    other = draw_candidate(np.random.default_rng(8), OBJECTS[0], preprocessing)
    assert again[0] == texture and np.array_equal(again[1], photo) and np.array_equal(again[2], mask)
    assert not np.array_equal(other[2], mask)
    canvas, (top, left) = canvas_shape(preprocessing)
    height, width = preprocessing.input_size
    assert photo.shape == (*canvas, 3) and mask.shape == canvas
    # the object lies inside the crop the model sees, and the crop is the canvas's centre pixel for pixel
    assert mask.sum() == mask[top : top + height, left : left + width].sum() > 0.1 * height * width
    assert np.array_equal(np.asarray(preprocessing.crop(photo)), photo[top : top + height, left : left + width])
    # the textures are grey, the cat is not: every coloured pixel is object, and most object pixels are coloured
    coloured = np.ptp(photo.astype(int), axis=2) > 0
    assert not (coloured & ~mask).any()
    assert coloured[mask].mean() > 0.8


def test_kept_composites_are_classified_as_their_object_and_reproducible(default_model: layermask.LoadedModel) -> None:
    model = default_model
    built = build_composites(model, 3, seed=5)
    assert [c.object for c in built.composites] == [o.name for o in OBJECTS[:3]]
    assert built.tried >= 3 and sum(built.kept.values()) == 3
    for composite in built.composites:
        assert composite.label in composite.classes
        assert composite.image.shape == (*model.input_size, 3) and composite.mask.shape == model.input_size
        probabilities = model.torch_network()(composite.tensor(model.preprocessing)).softmax(-1)[0].detach().numpy()
        assert int(probabilities.argmax()) == composite.label
        assert probabilities[composite.label] == pytest.approx(composite.probability, abs=1e-4)
    again = build_composites(model, 3, seed=5, batch_size=2)
    assert all(np.array_equal(a.photo, b.photo) and np.array_equal(a.mask, b.mask)
               for a, b in zip(built.composites, again.composites))


@pytest.mark.slow
def test_quick_localisation_run_on_lite0(default_model: layermask.LoadedModel, tmp_path: Path) -> None:
    settings = EvaluationSettings.for_run(quick=True)
    started = time.perf_counter()
    section = localisation.run(default_model, settings, tmp_path)
    print(f"quick localisation run: {time.perf_counter() - started:.1f} s")
    summary = section.summary
    assert summary["composites"] == settings.composites <= summary["tried"]
    assert section.figures == [tmp_path / "localisation_agreement.png", tmp_path / "localisation_ablation.png"]
    assert all(figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for figure in section.figures)
    assert set(summary["metrics"]) == set(localisation.METRICS)
    for metric, by_segmentation in summary["metrics"].items():
        assert set(by_segmentation) == set(localisation.SEGMENTATIONS)
        for by_strategy in by_segmentation.values():
            assert set(by_strategy) == set(strategies())
            for interval in by_strategy.values():
                lowest = -1.0 if metric == "cosine" else 0.0
                assert lowest <= interval["low"] <= interval["mean"] <= interval["high"] <= 1.0
    assert "| layer |" in section.markdown and all(f.name in section.markdown for f in section.figures)


def test_composite_checkpoints_round_trip_and_ignore_damaged_files(tmp_path: Path) -> None:
    scores = {("cosine", "slic 250", "layer"): 0.25, ("ablation_grey", "grid 16×16", "blur"): 1.0}
    path = tmp_path / "localisation-x" / "composite-3.json"
    localisation._store_checkpoint(path, scores, {"slic 250": 212})
    assert localisation._load_checkpoint(path) == (scores, {"slic 250": 212})
    assert not list(path.parent.glob("*.tmp"))
    path.write_text('{"scores": [["cosine", "slic 250"')  # a run killed mid-write by an older version
    assert localisation._load_checkpoint(path) is None
    assert localisation._load_checkpoint(tmp_path / "missing.json") is None
