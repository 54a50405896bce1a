"""An explanation's image and segments travel to TorchServe once; later batches name them by digest.

The handler's cache is bounded, and a request naming a digest it no longer holds is repeated in
full. Tested on the wire format in-process, and end to end against the session's real TorchServe.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from skimage import data

import layermask
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.models.images import decode_image
from layermask_service.client import ExplainClient, explain_request
from layermask_service.errors import InvalidArgument
from layermask_service.metrics import Metrics
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.torchserve.backend import TorchServeBackend
from layermask_service.torchserve.context_cache import DEFAULT_CACHE_ENTRIES, ContextCache, UnknownContext
from layermask_service.torchserve.messages import (
    digest_only_request,
    masked_batch_request,
    scoring_job,
    with_context_digest,
)
from layermask_service.torchserve.process import TorchServeProcess
from tests.helpers.service import LOOPBACK, RunningServer, png_bytes
from tests.helpers.torchserve import MODEL

CHELSEA = png_bytes(data.chelsea())


def keep_rows_job(model: layermask.LoadedModel, seed: int, rows: int = 8, image: bytes = CHELSEA) -> ScoringJob:
    tensor = model.preprocess(decode_image(image)).unsqueeze(0)
    segments = (np.arange(224 * 224).reshape(224, 224) // (224 * 28)).astype(np.int32)  # 8 horizontal bands
    keep = np.random.default_rng(seed).integers(0, 2, (rows, 8)).astype(np.uint8)
    return ScoringJob(tensor, "layer", segments=segments, rows=keep, labels=(285, 281))


def test_a_digest_names_the_image_and_segments_sent_before(default_model: layermask.LoadedModel) -> None:
    contexts = ContextCache(2)
    first = keep_rows_job(default_model, seed=1)
    full = with_context_digest(masked_batch_request(first))
    decoded = scoring_job(full, default_model, contexts)
    later = scoring_job(digest_only_request(keep_rows_job(default_model, seed=2), full.context_digest),
                        default_model, contexts)
    assert later.image is decoded.image and later.segments is decoded.segments  # decoded once, then shared
    assert len(digest_only_request(first, full.context_digest).SerializeToString()) < 200
    assert len(full.SerializeToString()) > 600_000

    with pytest.raises(UnknownContext, match="context_digest"):
        scoring_job(digest_only_request(first, "0" * 64), default_model, contexts)
    forged = with_context_digest(masked_batch_request(first))
    forged.context_digest = "f" * 64
    with pytest.raises(InvalidArgument, match="context_digest: is not the SHA-256"):
        scoring_job(forged, default_model, contexts)


def test_the_handler_cache_is_bounded_least_recently_used(default_model: layermask.LoadedModel) -> None:
    contexts = ContextCache(2)
    digests = []
    for seed in range(3):
        job = keep_rows_job(default_model, seed, image=png_bytes(np.full((64, 64, 3), 40 * seed, np.uint8)))
        request = with_context_digest(masked_batch_request(job))
        scoring_job(request, default_model, contexts)
        digests.append(request.context_digest)
        if seed == 1:
            assert contexts.get(digests[0]) is not None  # touched: digests[1] is now the oldest
    assert len(contexts) == 2
    assert contexts.get(digests[1]) is None and contexts.get(digests[0]) is not None
    assert contexts.get(digests[2]) is not None


def _backend(torchserve: TorchServeProcess, **overrides: object) -> TorchServeBackend:
    settings = dataclasses.replace(LOOPBACK, models=(MODEL,), backend="torchserve",
                                   torchserve_target=torchserve.grpc_target, **overrides)  # type: ignore[arg-type]
    backend = TorchServeBackend(settings, Metrics())
    backend.load()
    return backend


def _sent_bytes(backend: TorchServeBackend) -> float:
    value = backend.metrics.registry.get_sample_value("layermask_backend_request_bytes_total", {"model": MODEL})
    return value or 0.0


def test_an_explanation_sends_its_image_once(torchserve: TorchServeProcess,
                                             default_model: layermask.LoadedModel) -> None:
    once, every_batch = _backend(torchserve), _backend(torchserve, torchserve_send_context_once=False)
    try:
        weights = {}
        for name, backend in (("once", once), ("every batch", every_batch)):
            explanation = layermask.explain(backend.model(MODEL), decode_image(CHELSEA), segmentation="grid",
                                            num_samples=256, seed=3, batch_size=32, scorer=backend.scorer(
                                                backend.model(MODEL)))
            weights[name] = explanation.explanations[explanation.labels[0]].weights
        local = layermask.explain(default_model, decode_image(CHELSEA), segmentation="grid", num_samples=256, seed=3,
                                  batch_size=32)
        assert np.abs(weights["once"] - local.explanations[local.labels[0]].weights).max() <= 1e-5
        assert np.abs(weights["every batch"] - weights["once"]).max() <= 1e-5
        # 1 unmasked pass + 8 batches: the image (602 KB) goes once instead of 9 times.
        assert _sent_bytes(every_batch) > 9 * 600_000
        assert _sent_bytes(once) < 2 * 610_000 + 8 * 1_000
    finally:
        once.close()
        every_batch.close()


def test_an_evicted_digest_is_sent_again_in_full(torchserve: TorchServeProcess,
                                                 default_model: layermask.LoadedModel) -> None:
    backend = _backend(torchserve)
    try:
        model = backend.model(MODEL)
        scorer = backend.scorer(model)
        job = keep_rows_job(model, seed=5)
        first = scorer(job)
        # Other explanations' images push this one out of the worker's cache.
        for seed in range(DEFAULT_CACHE_ENTRIES + 1):
            other = keep_rows_job(model, seed, rows=1, image=png_bytes(np.full((32, 32, 3), seed, np.uint8)))
            backend._predictions(MODEL, "masked_batch", with_context_digest(masked_batch_request(other))
                                 .SerializeToString(), 60)
        before = _sent_bytes(backend)
        again = scorer(dataclasses.replace(job, rows=job.rows[::-1].copy()))
        assert _sent_bytes(backend) - before > 600_000  # the digest alone was refused, then the full request sent
        expected = score_jobs(default_model, [job], 64)[0]
        assert np.abs(first - expected).max() <= 1e-5
        assert np.abs(again - expected[::-1]).max() <= 1e-5
        refused = bpb.MaskedBatchResponse.FromString(backend._predictions(
            MODEL, "masked_batch", digest_only_request(job, "0" * 64).SerializeToString(), 60))
        assert refused.error.status == 409 and "context_digest" in refused.error.message
    finally:
        backend.close()


def test_the_service_explains_through_the_digest_path(torchserve: TorchServeProcess) -> None:
    settings = dataclasses.replace(LOOPBACK, backend="torchserve", torchserve_target=torchserve.grpc_target)
    server = RunningServer(settings)
    try:
        with ExplainClient(server.target, timeout=120) as client:
            response = client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=96, seed=1))
        assert response.explanations[0].label in (281, 282, 285)  # a cat: tabby, tiger cat, Egyptian cat
        assert len(response.explanations[0].weights) == 196
        sent = server.metric("layermask_backend_request_bytes_total", model=MODEL)
        assert 600_000 < sent < 2 * 610_000 + 3 * 1_000  # the image once, then 3 batches of rows and a digest
    finally:
        server.stop()
