"""Peer agreement: explain(..., masking="grey") reproduces the lime package's LimeImageExplainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lime import lime_image
from skimage import data

import layermask
from layermask.explanation.lime import explain
from layermask.explanation.segmentation import segment

SAMPLES = 300


@pytest.mark.slow
def test_grey_masking_agrees_with_lime(default_model: layermask.LoadedModel) -> None:
    crop = np.asarray(default_model.preprocessing.crop(data.chelsea()))
    segments = segment(crop, "quickshift")
    normalised = default_model.preprocessing.normalise(crop).permute(1, 2, 0).double().numpy()

    def classify(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            images = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            return default_model.network(images).softmax(dim=-1).double().numpy()

    # hide_color=0 is the normalisation mean colour: the same fill as layermask's "grey".
    theirs = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        normalised, classify, top_labels=1, hide_color=0.0, num_samples=SAMPLES,
        segmentation_fn=lambda image: segments, random_seed=0)
    label = theirs.top_labels[0]
    lime_weights = np.zeros(int(segments.max()) + 1)
    for feature, weight in theirs.local_exp[label]:
        lime_weights[feature] = weight

    # lime draws its rows from RandomState(0) and sets the first to all ones.
    rows = np.random.RandomState(0).randint(0, 2, SAMPLES * len(lime_weights)).reshape(SAMPLES, -1)
    rows[0] = 1
    ours = explain(default_model, data.chelsea(), masking="grey", segmentation=segments, perturbations=rows,
                   labels=[label])
    weights = ours.explanations[label].weights
    cosine = weights @ lime_weights / (np.linalg.norm(weights) * np.linalg.norm(lime_weights))
    assert cosine >= 0.999, cosine
    assert abs(ours.explanations[label].intercept - theirs.intercept[label]) < 1e-3
