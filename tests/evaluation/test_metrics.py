"""The building blocks of experiments 1 and 2: metrics on hand-made cases, masks, photos, and the
invariance assertion on a tiny real network (and on a runtime that leaks hidden content)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import layermask
from layermask.evaluation.common import EvaluationSettings, patch_grid
from layermask.evaluation.influence import InvarianceViolation, logit_change, measure, random_cell_masks
from layermask.evaluation.patch_removal import artifact_predictions, kl_divergence, removal_rows
from layermask.evaluation.photos import PHOTO_LABELS, load_photos
from tests.helpers.tiny_model import BrightnessClassifier, tiny_model


def test_kl_divergence_on_hand_made_distributions() -> None:
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]])
    expected = [0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), 0.0, 0.5 * math.log(2)]
    np.testing.assert_allclose(kl_divergence(p, q), expected, atol=1e-12)
    # direction: KL(p ‖ q), not KL(q ‖ p) (which is infinite for the third row)
    assert kl_divergence(q[2], p[None])[0] > 20  # 0.25 · ln(0.25 / 1.2e-38) − 0.17


def test_kl_divergence_is_finite_where_the_masked_probability_underflowed() -> None:
    value = kl_divergence(np.array([0.9, 0.1]), np.array([[1.0, 0.0]]))[0]
    assert math.isfinite(value) and value > 0.1 * 80  # 0.1 · ln(0.1 / 1.2e-38) ≈ 8.5


def test_artifact_predictions_are_classes_outside_the_unmasked_top_k() -> None:
    unmasked = np.array([0.30, 0.25, 0.15, 0.10, 0.08, 0.07, 0.05])  # top-5: classes 0–4
    masked_top1 = np.array([0, 4, 5, 6, 2])
    assert artifact_predictions(unmasked, masked_top1).tolist() == [False, False, True, True, False]
    assert artifact_predictions(unmasked, masked_top1, k=1).tolist() == [False, True, True, True, True]


def test_removal_rows_hide_growing_prefixes_of_each_random_order() -> None:
    fractions = (0.1, 0.5, 0.9)
    rows = removal_rows(196, fractions, orders=3, rng=np.random.default_rng(7))
    assert rows.shape == (3, 3, 196)
    for index, fraction in enumerate(fractions):
        assert ((rows[index] == 0).sum(axis=1) == round(fraction * 196)).all()
    assert (rows[1] <= rows[0]).all() and (rows[2] <= rows[1]).all()  # the same order hides a superset
    assert not np.array_equal(rows[1, 0], rows[1, 1])  # different orders
    assert np.array_equal(rows, removal_rows(196, fractions, orders=3, rng=np.random.default_rng(7)))


def test_patch_grid_covers_sizes_that_are_not_a_multiple_of_the_patch() -> None:
    grid = patch_grid((260, 260), 16)
    assert grid.shape == (260, 260) and grid.max() == 17 * 17 - 1
    assert np.array_equal(np.unique(grid), np.arange(17 * 17))
    assert (grid[:16, :16] == 0).all() and (grid[256:, 256:] == 17 * 17 - 1).all()
    masks = random_cell_masks(2, patch_grid((224, 224), 16), 0.25, np.random.default_rng(0))
    assert masks.shape == (2, 224, 224) and np.allclose(1 - masks.mean(axis=(1, 2)), 49 / 196)


def test_logit_change_on_hand_made_logits() -> None:
    reference = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    changed = torch.tensor([[1.0, 2.5, 0.0], [0.0, 4.0, 0.0]])
    result = logit_change(reference, changed).to_dict()
    assert result["max_abs_logit_change"] == 4.0
    assert result["mean_abs_logit_change"] == pytest.approx((0.5 + 3.0 + 4.0) / 6)
    assert result["top1_changed_share"] == 0.5 and result["samples"] == 2


def test_photos_are_real_rgb_with_existing_imagenet_labels() -> None:
    photos = load_photos()
    assert [p.name for p in photos] == list(PHOTO_LABELS)
    for photo in photos:
        assert photo.pixels.dtype == np.uint8 and photo.pixels.ndim == 3 and photo.pixels.shape[2] == 3
        assert photo.pixels.std() > 20  # a photo, not a flat placeholder
        assert photo.label_names == PHOTO_LABELS[photo.name]
    assert load_photos(2)[1].label_names == ("espresso", "cup")


_SMALL = replace(EvaluationSettings.for_run(quick=True), photos=2, influence_masks=1, influence_fractions=(0.3, 0.7))


def test_influence_measures_exact_invariance_of_layer_masking_on_a_real_network() -> None:
    changes = measure(tiny_model(), _SMALL)
    for (strategy, _, _), change in changes.items():
        assert change.samples == 2
        assert (change.max_abs == 0.0) == (strategy != "blur")  # blur mixes hidden pixels into its fill


def test_influence_raises_when_the_masked_runtime_leaks_hidden_content() -> None:
    network = BrightnessClassifier().eval()  # a mask-aware runtime that ignores the mask: hidden content leaks
    leaky = layermask.LoadedModel("leaky", None, tiny_model().preprocessing, ["bright", "middle", "dark"],
                                  masked_runtime=lambda images, masks: network(images.expand(len(masks), -1, -1, -1)))
    with pytest.raises(InvarianceViolation, match="layer masking changed its logits"):
        measure(leaky, _SMALL)


def test_patch_removal_tally_on_hand_made_predictions() -> None:
    from layermask.evaluation.patch_removal import _Tally
    from layermask.evaluation.photos import Photo

    unmasked = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0])  # top-5: classes 0–4; true label 1
    photo = Photo("hand-made", "test", np.zeros((4, 4, 3), np.uint8), labels=(1,))
    masked = np.zeros((2, 4, 8))  # fraction 0: unmasked; fraction 1: top-1 0, 1, 6, 7 (two artifacts)
    masked[0] = unmasked
    for order, top in enumerate((0, 1, 6, 7)):
        masked[1, order] = np.full(8, 0.05)
        masked[1, order, top] = 0.65
    tally = _Tally((0.0, 0.5))
    tally.add("grey", photo, unmasked, masked)
    curves = tally.curves()["grey"]
    assert curves["unchanged_top1_share"] == [1.0, 0.25]
    assert curves["artifact_rate"] == [0.0, 0.5]
    assert curves["label_accuracy"] == [0.0, 0.25]
    assert curves["mean_kl"][0] == 0.0 and curves["mean_kl"][1] > 0
    assert dict(tally.classes["grey"]) == {6: 1, 7: 1}
    assert tally.curves()["layer"]["artifact_rate"] == [0.0, 0.0]  # untouched strategies stay empty
