"""num_samples="auto": stops when the weights settle, is deterministic, and equals a fixed run of the same length."""

from __future__ import annotations

import numpy as np
import pytest

import layermask
from layermask.explanation.adaptive import cosine, settled, top_set
from layermask.explanation.lime import explain_many, plan_explanation
from tests.helpers.tiny_model import noisy_ramp, tiny_model_at

SIZE = 64
GRID = {"segmentation": "grid", "segmentation_params": {"patch_size": 16}}  # 16 segments


@pytest.fixture(scope="module")
def tiny_model() -> layermask.LoadedModel:
    return tiny_model_at(SIZE)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return noisy_ramp(SIZE)


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_stops_early_and_equals_the_fixed_run(tiny_model: layermask.LoadedModel, photo: np.ndarray,
                                              method: str) -> None:
    adaptive = {"tolerance": 0.99, "top_k": 3, "batch": 64, "max_samples": 2000}
    auto = layermask.explain(tiny_model, photo, method=method, num_samples="auto", adaptive=adaptive, seed=2, **GRID)
    assert auto.converged is True and auto.method == method
    assert auto.num_samples < 2000 and auto.num_samples % 64 == 0
    fixed = layermask.explain(tiny_model, photo, method=method, num_samples=auto.num_samples, seed=2, **GRID)
    assert fixed.converged is None
    label = auto.labels[0]
    np.testing.assert_array_equal(auto.explanations[label].weights, fixed.explanations[label].weights)
    assert "converged" in repr(auto) and auto.to_dict()["converged"] is True


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_runs_to_the_maximum_when_it_cannot_converge(tiny_model: layermask.LoadedModel, photo: np.ndarray,
                                                      method: str) -> None:
    seen: list[tuple[int, int]] = []
    result = layermask.explain(tiny_model, photo, method=method, num_samples="auto", seed=2, batch_size=40,
                               adaptive={"tolerance": 1.0, "top_k": 16, "batch": 64, "max_samples": 300},
                               progress=lambda done, total: seen.append((done, total)), **GRID)
    assert result.converged is False and result.num_samples == 300
    assert seen == [(40, 300), (64, 300), (104, 300), (128, 300), (168, 300), (192, 300), (232, 300),
                    (256, 300), (296, 300), (300, 300)]  # forward batches within each adaptive batch


def test_deterministic_for_a_seed(tiny_model: layermask.LoadedModel, photo: np.ndarray) -> None:
    options = layermask.ExplainOptions(method="kernel_shap", num_samples="auto", adaptive={"batch": 32}, seed=5,
                                       **GRID)
    first, second = (layermask.explain(tiny_model, photo, options) for _ in range(2))
    other = layermask.explain(tiny_model, photo, options.replace(seed=6))
    label = first.labels[0]
    assert first.num_samples == second.num_samples
    np.testing.assert_array_equal(first.explanations[label].weights, second.explanations[label].weights)
    assert not np.array_equal(first.explanations[label].weights, other.explanations[label].weights)
    weights = first.explanations[label]
    assert weights.weights.sum() == pytest.approx(weights.local_prediction - weights.intercept, abs=1e-12)


def test_kernel_shap_enumerates_when_it_can(tiny_model: layermask.LoadedModel, photo: np.ndarray) -> None:
    result = layermask.explain(tiny_model, photo, method="kernel_shap", num_samples="auto",
                               segmentation="grid", segmentation_params={"patch_size": 32})
    assert result.num_samples == 16 and result.converged is True  # 4 segments: every coalition


def test_odd_batches_keep_pairs_together(tiny_model: layermask.LoadedModel, photo: np.ndarray) -> None:
    result = layermask.explain(tiny_model, photo, method="kernel_shap", num_samples="auto", seed=1,
                               adaptive={"batch": 33, "tolerance": 1.0, "max_samples": 102}, **GRID)
    assert result.num_samples == 102 and result.converged is False  # batches of 34 rows


def test_explain_many_honours_method_and_adaptive(tiny_model: layermask.LoadedModel, photo: np.ndarray) -> None:
    arguments = [dict(method="lime", num_samples="auto", **GRID), dict(method="kernel_shap", num_samples=90, **GRID),
                 dict(method="occlusion", occlusion={"window": 16, "stride": 16}),
                 dict(method="kernel_shap", num_samples="auto", masking="grey", **GRID),
                 dict(method="lime", num_samples=50, **GRID)]
    plans = [plan_explanation(tiny_model, photo, seed=4, **a) for a in arguments]  # type: ignore[arg-type]
    together = explain_many(tiny_model, plans, max_rows=32)
    for a, shared in zip(arguments, together):
        alone = layermask.explain(tiny_model, photo, seed=4, **a)  # type: ignore[arg-type]
        assert (shared.method, shared.num_samples, shared.converged) == (alone.method, alone.num_samples,
                                                                         alone.converged)
        np.testing.assert_allclose(shared.explanations[shared.labels[0]].weights,
                                   alone.explanations[alone.labels[0]].weights, rtol=0, atol=1e-9)


def test_checks() -> None:
    a = np.array([3.0, 1.0, 0.5, -1.0])
    assert cosine(a, 2 * a) == pytest.approx(1.0) and cosine(a, np.zeros(4)) == 0.0
    assert cosine(np.zeros(4), np.zeros(4)) == 1.0
    assert top_set(a, 2) == {0, 1} and top_set(a, 9) == {0, 1, 2, 3}
    assert settled(a + 0.01, a, 0.99, 2) and not settled(a[[1, 0, 2, 3]] * [1, 1, 1, 1], a, 0.5, 1)
