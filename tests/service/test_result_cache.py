"""The result cache over real loopback gRPC: repeats answered byte for byte and fast, a bounded size,
misses for anything that changes the result, no caching without a seed, and ``cache_mib = 0``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from skimage import data

from layermask_service.client import ExplainClient, explain_request
from layermask_service.proto import explain_pb2 as pb
from layermask_service.result_cache import MIB, weights_digest
from layermask_service.settings import load_settings
from tests.helpers.service import LOOPBACK, RunningServer, png_bytes
from tests.helpers.tiny_model import tiny_model

CHELSEA = png_bytes(data.chelsea())
SMALL: dict[str, Any] = {"segmentation": "grid", "segmentation_params": {"patch_size": 56}, "num_samples": 16,
                         "seed": 1}
"""A cheap explanation (16 segments, 16 samples)."""


def _counts(server: RunningServer) -> tuple[float, float]:
    return server.metric("layermask_cache_hits_total"), server.metric("layermask_cache_misses_total")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(dataclasses.replace(LOOPBACK, models=("efficientnet_lite0", "efficientnet_lite1")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[ExplainClient]:
    with ExplainClient(server.target, timeout=300) as c:
        yield c


def test_a_repeat_is_the_stored_response_byte_for_byte_and_much_faster(server: RunningServer,
                                                                        client: ExplainClient) -> None:
    request = explain_request(CHELSEA, segmentation="grid", num_samples=40, seed=7, top_labels=2,
                              heatmap_format=pb.HEATMAP_FORMAT_FLOAT16)
    hits, misses = _counts(server)
    started = time.perf_counter()
    computed = client.explain(request)
    miss_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cached = client.explain(request)
    hit_seconds = time.perf_counter() - started
    assert cached.SerializeToString() == computed.SerializeToString()  # the timings too: the stored response
    assert _counts(server) == (hits + 1, misses + 1)
    assert hit_seconds < miss_seconds / 20, (hit_seconds, miss_seconds)
    # The stream answers from the cache too: the result at once, no progress.
    events = list(client.stub.ExplainStream(request, timeout=60))
    assert [event.WhichOneof("event") for event in events] == ["result"]
    assert events[0].result.SerializeToString() == computed.SerializeToString()
    assert _counts(server) == (hits + 2, misses + 1)


@pytest.mark.parametrize("change", [
    {"masking": "grey"}, {"method": "kernel_shap"}, {"seed": 2}, {"num_samples": 17},
    {"segmentation_params": {"patch_size": 112}}, {"heatmap_format": pb.HEATMAP_FORMAT_PNG_OVERLAY},
    {"model": "efficientnet_lite1"}, {"image": png_bytes(data.astronaut())},
], ids=lambda change: next(iter(change)))
def test_anything_that_changes_the_result_misses(server: RunningServer, client: ExplainClient,
                                                 change: dict[str, Any]) -> None:
    base = {"image": CHELSEA, **SMALL}
    client.explain(explain_request(**base))  # cached now (or already)
    hits, misses = _counts(server)
    changed = client.explain(explain_request(**{**base, **change}))
    assert _counts(server) == (hits, misses + 1)
    assert changed.SerializeToString() != client.explain(explain_request(**base)).SerializeToString()
    assert _counts(server) == (hits + 1, misses + 1)


def test_requests_without_a_seed_are_not_cached(server: RunningServer, client: ExplainClient) -> None:
    request = explain_request(CHELSEA, **{**SMALL, "seed": None, "segmentation_params": {"patch_size": 74}})
    counts, held = _counts(server), len(server.server.servicer.cache)
    rows = server.perturbations()
    first, second = client.explain(request), client.explain(request)
    assert first.explanations == second.explanations  # the default seed: the same result, computed twice
    assert _counts(server) == counts and len(server.server.servicer.cache) == held
    assert server.perturbations() - rows == 2 * first.num_samples


def test_the_cache_keeps_to_its_size_evicting_the_least_recently_used() -> None:
    running = RunningServer(dataclasses.replace(LOOPBACK, cache_mib=0.25))
    try:
        cache = running.server.servicer.cache
        assert cache.max_bytes == MIB // 4
        with ExplainClient(running.target, timeout=300) as client:
            def explain(seed: int) -> pb.ExplainResponse:
                # Float16 crop heatmaps of two labels: about 200 KB a response, so one fits at a time.
                return client.explain(explain_request(CHELSEA, **{**SMALL, "seed": seed}, top_labels=2,
                                                      heatmap_format=pb.HEATMAP_FORMAT_FLOAT16))

            sizes = []
            for seed in range(4):
                sizes.append(explain(seed).ByteSize())
                assert 0 < cache.bytes_used <= cache.max_bytes
                assert running.metric("layermask_cache_bytes") == cache.bytes_used
            assert sum(sizes) > cache.max_bytes and len(cache) < 4
            hits, misses = _counts(running)
            explain(3)  # the newest is still held
            explain(0)  # the oldest was evicted
            assert _counts(running) == (hits + 1, misses + 1)
    finally:
        running.stop()


def test_cache_mib_0_turns_the_cache_off() -> None:
    running = RunningServer(dataclasses.replace(LOOPBACK, cache_mib=0))
    try:
        with ExplainClient(running.target, timeout=300) as client:
            request = explain_request(CHELSEA, **SMALL)
            first, second = client.explain(request), client.explain(request)
        assert first.explanations == second.explanations and first.timings != second.timings  # computed twice
        assert _counts(running) == (0, 0) and len(running.server.servicer.cache) == 0
    finally:
        running.stop()


def test_cache_mib_from_file_environment_and_flag(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("[server]\ncache_mib = 8\n")
    assert load_settings(environ={}).cache_mib == 64
    assert load_settings(config, environ={}).cache_mib == 8
    assert load_settings(config, environ={"LAYERMASK_CACHE_MIB": "0.5"}).cache_mib == 0.5
    assert load_settings(config, environ={}, overrides={"cache_mib": 0}).cache_mib == 0
    with pytest.raises(ValueError, match="cache_mib must not be negative"):
        load_settings(environ={"LAYERMASK_CACHE_MIB": "-1"})


def test_the_weights_digest_follows_every_weight() -> None:
    model = tiny_model()
    assert weights_digest(model) == weights_digest(tiny_model())
    with torch.no_grad():
        model.torch_network().state_dict()["head.bias"][2] += 1e-7  # the tensor itself, not a copy
    assert weights_digest(model) != weights_digest(tiny_model())
