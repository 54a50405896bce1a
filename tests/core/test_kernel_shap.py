"""KernelSHAP over segments: exact against the Shapley formula, against the shap package, efficiency, pairing."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import layermask
from layermask.explanation.kernel_shap import enumerate_coalitions, sample_coalitions, shapley_kernel
from layermask.explanation.scoring import ScoringJob, score_jobs
from tests.helpers.tiny_model import noisy_ramp, tiny_model_at

SIZE = 64


@pytest.fixture(scope="module")
def tiny_model() -> layermask.LoadedModel:
    return tiny_model_at(SIZE)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return noisy_ramp(SIZE)


def _blocks(per_side: int) -> np.ndarray:
    """A label map of per_side² unequal blocks."""
    edges = np.linspace(0, SIZE, per_side + 1).round().astype(int)
    edges[1:-1] += np.arange(1, per_side) * 3 - per_side  # uneven widths
    index = np.searchsorted(edges, np.arange(SIZE), side="right") - 1
    return (index[:, None] * per_side + index[None, :]).astype(np.int32)


def _coalition_values(model: layermask.LoadedModel, photo: np.ndarray, segments: np.ndarray, rows: np.ndarray,
                      label: int, masking: str = "layer") -> np.ndarray:
    tensor = model.preprocess(photo).unsqueeze(0)
    job = ScoringJob(tensor, masking, segments=segments, rows=rows.astype(np.uint8), labels=(label,))
    return score_jobs(model, [job], max_rows=256)[0][:, 0]


def _brute_force_shapley(values: dict[tuple[int, ...], float], m: int) -> np.ndarray:
    phi = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for subset in itertools.combinations(others, size):
                with_i = tuple(sorted((*subset, i)))
                phi[i] += weight * (values[with_i] - values[subset])
    return phi


@pytest.mark.parametrize("masking", ["layer", "grey"])
def test_exact_enumeration_gives_the_shapley_values(tiny_model: layermask.LoadedModel, photo: np.ndarray,
                                                    masking: str) -> None:
    segments = _blocks(3)  # 9 segments: 512 coalitions fit in the budget
    explanation = layermask.explain(tiny_model, photo, segmentation=segments, method="kernel_shap",
                                    num_samples=600, masking=masking, labels=[0, 2])
    assert explanation.method == "kernel_shap" and explanation.num_samples == 512 and explanation.converged is None
    rows = np.array(list(itertools.product((0, 1), repeat=9)))
    for label in (0, 2):
        f = _coalition_values(tiny_model, photo, segments, rows, label, masking)
        values = {tuple(int(j) for j in np.flatnonzero(row)): float(v) for row, v in zip(rows, f)}
        expected = _brute_force_shapley(values, 9)
        result = explanation.explanations[label]
        np.testing.assert_allclose(result.weights, expected, rtol=0, atol=1e-6)
        assert result.intercept == pytest.approx(values[()], abs=1e-7)
        assert result.local_prediction == pytest.approx(values[tuple(range(9))], abs=1e-7)
        assert abs(expected).max() > 0.01  # not a trivial case


def test_agrees_with_the_shap_package(tiny_model: layermask.LoadedModel, photo: np.ndarray) -> None:
    shap = pytest.importorskip("shap")
    segments = _blocks(4)  # 16 segments: 65,536 coalitions, so both sample
    ours = layermask.explain(tiny_model, photo, segmentation=segments, method="kernel_shap", num_samples=3000,
                             seed=1)
    label = ours.labels[0]
    assert not np.isnan(ours.explanations[label].weights).any() and ours.num_samples == 3000

    def predict(coalitions: np.ndarray) -> np.ndarray:
        return _coalition_values(tiny_model, photo, segments, coalitions, label)

    explainer = shap.KernelExplainer(predict, np.zeros((1, 16)))
    theirs = np.asarray(explainer.shap_values(np.ones((1, 16)), nsamples=3000, l1_reg=False, silent=True)).ravel()
    weights = ours.explanations[label].weights
    cosine = float(weights @ theirs / np.linalg.norm(weights) / np.linalg.norm(theirs))
    assert cosine >= 0.99, cosine
    assert theirs.sum() == pytest.approx(weights.sum(), abs=1e-6)  # both meet the efficiency constraint


@pytest.mark.parametrize("masking", ["layer", "blur"])
def test_efficiency_holds_when_sampling(tiny_model: layermask.LoadedModel, photo: np.ndarray, masking: str) -> None:
    explanation = layermask.explain(tiny_model, photo, segmentation="grid", segmentation_params={"patch_size": 8},
                                    method="kernel_shap", num_samples=101, masking=masking, top_labels=2, seed=4)
    assert explanation.num_segments == 64 and explanation.num_samples == 101
    ends = _coalition_values(tiny_model, photo, explanation.segments, np.array([[1] * 64, [0] * 64]),
                             explanation.labels[1], masking)
    for label in explanation.labels:
        result = explanation.explanations[label]
        assert result.weights.sum() == pytest.approx(result.local_prediction - result.intercept, abs=1e-12)
        assert np.isfinite(result.score) and result.score <= 1.0
    second = explanation.explanations[explanation.labels[1]]
    assert (second.local_prediction, second.intercept) == pytest.approx(tuple(ends), abs=1e-7)
    assert explanation.top_predictions[1].probability == pytest.approx(second.local_prediction, abs=1e-6)


def test_paired_sampling_pairs_rows_and_follows_the_kernel() -> None:
    rows = sample_coalitions(4001, 10, seed=7)
    assert rows[0].all() and not rows[1].any()
    pairs = rows[2:-1].reshape(-1, 2, 10)
    assert (pairs[:, 0] + pairs[:, 1] == 1).all()  # each coalition followed by its complement
    sizes = rows[2::2].sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 9
    kernel_mass = np.array([(10 - 1) / (s * (10 - s)) for s in range(1, 10)])
    observed = np.bincount(sizes, minlength=10)[1:] / len(sizes)
    np.testing.assert_allclose(observed, kernel_mass / kernel_mass.sum(), atol=0.03)
    assert np.array_equal(sample_coalitions(300, 10, seed=7), rows[:300])  # prefixes agree
    assert not np.array_equal(sample_coalitions(300, 10, seed=8), rows[:300])


def test_enumeration_and_kernel() -> None:
    rows, weights = enumerate_coalitions(5)
    assert len(np.unique(rows, axis=0)) == 32 and rows[0].all() and not rows[1].any()
    assert weights[0] == weights[1] == 0.0
    assert weights[2:] == pytest.approx(shapley_kernel(5, rows[2:].sum(axis=1)))
    assert shapley_kernel(5, np.array([1, 2])) == pytest.approx([4 / (5 * 4), 4 / (10 * 6)])
    assert np.isinf(shapley_kernel(5, np.array([0, 5]))).all()


def test_perturbations_need_both_ends(tiny_model: layermask.LoadedModel, photo: np.ndarray) -> None:
    rows = np.random.default_rng(0).integers(0, 2, (40, 16), dtype=np.uint8)
    rows[0], rows[1] = 1, 0
    result = layermask.explain(tiny_model, photo, segmentation="grid", method="kernel_shap", perturbations=rows)
    weights = result.explanations[result.labels[0]]
    assert weights.weights.sum() == pytest.approx(weights.local_prediction - weights.intercept, abs=1e-12)
    with pytest.raises(layermask.InvalidOptionError, match=r"^perturbations: .*all-hidden"):
        layermask.explain(tiny_model, photo, segmentation="grid", method="kernel_shap", perturbations=rows[2:])
