"""Scoring several jobs in shared forward passes gives each job what it gets alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import layermask
from layermask.explanation.lime import explain, explain_many, plan_explanation
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.models.preprocessing import Preprocessing
from tests.helpers.networks import SeededNetworks

SIZE = 64


@pytest.fixture(scope="module")
def small_model(seeded_network: SeededNetworks) -> layermask.LoadedModel:
    preprocessing = Preprocessing(input_size=(SIZE, SIZE), resize_size=SIZE)
    return layermask.LoadedModel("resnet18", seeded_network("resnet18"), preprocessing)


def _photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _jobs(model: layermask.LoadedModel) -> list[ScoringJob]:
    rng = np.random.default_rng(0)
    segments = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) // -(-SIZE * SIZE // 6)
    first, second = (model.preprocess(_photo(seed)).unsqueeze(0) for seed in (1, 2))
    return [
        ScoringJob(first, "layer", segments=segments, rows=rng.integers(0, 2, (5, 6), dtype=np.uint8), labels=(3, 1)),
        ScoringJob(second, "grey", masks=rng.integers(0, 2, (4, SIZE, SIZE)).astype(np.uint8)),
        ScoringJob(second, "layer", segments=segments, rows=rng.integers(0, 2, (3, 6), dtype=np.uint8), labels=(7,)),
    ]


def test_shared_passes_match_each_job_alone(small_model: layermask.LoadedModel) -> None:
    jobs = _jobs(small_model)
    for job in jobs:
        job.check((SIZE, SIZE), small_model.num_classes)
    passes: list[int] = []
    together = score_jobs(small_model, jobs, max_rows=6, on_forward=passes.append)
    assert passes == [6, 2, 4]  # layer rows of two images share passes; grey runs on its own
    for job, result in zip(jobs, together):
        alone = score_jobs(small_model, [job], max_rows=job.num_rows)[0]
        assert result.shape == alone.shape == (job.num_rows, len(job.labels or range(small_model.num_classes)))
        np.testing.assert_allclose(result, alone, rtol=0, atol=1e-6)


def test_a_job_of_the_wrong_shape_names_the_field(small_model: layermask.LoadedModel) -> None:
    job = _jobs(small_model)[0]
    checks = {
        "masking": ScoringJob(job.image, "paint", segments=job.segments, rows=job.rows),
        "image": ScoringJob(job.image[:, :, :10], "layer", segments=job.segments, rows=job.rows),
        "keep": ScoringJob(job.image, "layer", segments=job.segments, rows=job.rows[:, :4]),
        "labels": ScoringJob(job.image, "layer", segments=job.segments, rows=job.rows, labels=(1000,)),
        "masks": ScoringJob(job.image, "layer", masks=np.ones((2, 8, 8), dtype=np.uint8)),
    }
    for field, bad in checks.items():
        with pytest.raises(ValueError, match=f"^{field}: "):
            bad.check((SIZE, SIZE), small_model.num_classes)


def test_explain_many_matches_explain(small_model: layermask.LoadedModel) -> None:
    arguments = [dict(masking="layer", seed=3, top_labels=2), dict(masking="layer", seed=4, labels=[5]),
                 dict(masking="blur", seed=5)]
    common = dict(segmentation="grid", segmentation_params={"patch_size": 16}, num_samples=40)
    plans = [plan_explanation(small_model, _photo(i), **common, **a) for i, a in enumerate(arguments)]
    passes: list[int] = []
    together = explain_many(small_model, plans, max_rows=32, on_forward=passes.append)
    assert passes == [2, 1, 32, 32, 16, 32, 8]  # unmasked rows per strategy, then the rows per strategy
    for i, (a, shared) in enumerate(zip(arguments, together)):
        alone = explain(small_model, _photo(i), **common, **a)
        assert shared.labels == alone.labels and shared.masking == a["masking"]
        for label in alone.labels:
            np.testing.assert_allclose(shared.explanations[label].weights, alone.explanations[label].weights,
                                       rtol=0, atol=1e-5)
    assert torch.equal(plans[0].tensor, small_model.preprocess(_photo(0)).unsqueeze(0))
