"""Errors and limits of the ExplainService over real gRPC: codes, deadlines, the queue, SIGTERM."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skimage import data

import layermask
from layermask.explanation import scoring
from layermask.masking.strategies import Masker
from layermask_service.client import ExplainClient, explain_request
from layermask_service.proto import explain_pb2 as pb
from layermask_service.settings import Settings
from tests.helpers.service import RunningServer, png_bytes, wait_for, wait_until_steady

CHELSEA = png_bytes(data.chelsea())


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                     max_concurrent=1, max_queue=1, max_message_bytes=4 * 1024 * 1024))
    yield running
    running.stop()


def label_map(height: int, width: int, labels: list[int]) -> pb.Segmentation:
    return pb.Segmentation(label_map=pb.LabelMap(height=height, width=width, labels=labels))


BAD_REQUESTS = {
    "empty image": (pb.ExplainRequest(), grpc.StatusCode.INVALID_ARGUMENT, "image: image is empty"),
    "corrupt image": (pb.ExplainRequest(image=b"\x89PNG junk"), grpc.StatusCode.INVALID_ARGUMENT, "image:"),
    "unknown model": (pb.ExplainRequest(image=CHELSEA, model="resnet9000"), grpc.StatusCode.NOT_FOUND,
                      "model 'resnet9000' is not loaded"),
    "masking": (pb.ExplainRequest(image=CHELSEA, masking=42), grpc.StatusCode.INVALID_ARGUMENT, "masking:"),
    "num_samples": (pb.ExplainRequest(image=CHELSEA, num_samples=1), grpc.StatusCode.INVALID_ARGUMENT,
                    "num_samples:"),
    "keep_probability": (pb.ExplainRequest(image=CHELSEA, keep_probability=1.5), grpc.StatusCode.INVALID_ARGUMENT,
                         "keep_probability:"),
    "kernel_width": (pb.ExplainRequest(image=CHELSEA, kernel_width=0.0), grpc.StatusCode.INVALID_ARGUMENT,
                     "kernel_width:"),
    "seed": (pb.ExplainRequest(image=CHELSEA, seed=-1), grpc.StatusCode.INVALID_ARGUMENT, "seed:"),
    "labels range": (pb.ExplainRequest(image=CHELSEA, labels=[1000]), grpc.StatusCode.INVALID_ARGUMENT, "labels:"),
    "labels and top_labels": (pb.ExplainRequest(image=CHELSEA, labels=[1], top_labels=2),
                              grpc.StatusCode.INVALID_ARGUMENT, "labels:"),
    "top_labels": (pb.ExplainRequest(image=CHELSEA, top_labels=0), grpc.StatusCode.INVALID_ARGUMENT, "top_labels:"),
    "slic parameter": (pb.ExplainRequest(image=CHELSEA, segmentation=pb.Segmentation(slic=pb.Slic(n_segments=1))),
                       grpc.StatusCode.INVALID_ARGUMENT, "segmentation.slic: slic parameter n_segments"),
    "label map size": (pb.ExplainRequest(image=CHELSEA, segmentation=label_map(2, 2, [0, 1, 0])),
                       grpc.StatusCode.INVALID_ARGUMENT, "segmentation.label_map:"),
    "label map shape": (pb.ExplainRequest(image=CHELSEA, segmentation=label_map(2, 2, [0, 1, 0, 1])),
                        grpc.StatusCode.INVALID_ARGUMENT, "segmentation.label_map: shape"),
    "one segment": (pb.ExplainRequest(image=CHELSEA, segmentation=label_map(224, 224, [3] * 224 * 224)),
                    grpc.StatusCode.INVALID_ARGUMENT, "single segment"),
    "heatmap_format": (pb.ExplainRequest(image=CHELSEA, heatmap_format=9), grpc.StatusCode.INVALID_ARGUMENT,
                       "heatmap_format:"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_their_code_and_name_the_field(server: RunningServer, case: str) -> None:
    request, code, message = BAD_REQUESTS[case]
    with ExplainClient(server.target, timeout=60) as client, pytest.raises(grpc.RpcError) as caught:
        client.explain(request)
    assert caught.value.code() == code
    assert message in caught.value.details()


@pytest.mark.parametrize(("request_", "message"), [
    (pb.PredictRequest(image=CHELSEA, mask=pb.PackedMask(height=10, width=10, bits=b"\0" * 13)), "mask: is 10×10"),
    (pb.PredictRequest(image=CHELSEA, mask=pb.PackedMask(height=224, width=224, bits=b"\0")), "mask: 1 bytes"),
    (pb.PredictRequest(image=CHELSEA, top_k=0), "top_k:"),
    (pb.PredictRequest(image=CHELSEA, segment_keep=pb.SegmentKeep(
        segmentation=pb.Segmentation(grid=pb.Grid(patch_size=112)), keep=[True])), "segment_keep.keep:"),
])
def test_bad_predict_requests(server: RunningServer, request_: pb.PredictRequest, message: str) -> None:
    with ExplainClient(server.target, timeout=60) as client, pytest.raises(grpc.RpcError) as caught:
        client.predict(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


def test_a_failing_computation_is_internal_and_the_server_keeps_serving(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_masker: Callable[[str, layermask.LoadedModel], Masker] = scoring.cached_masker

    def masker_with_failing_grey(name: str, model: layermask.LoadedModel) -> Masker:
        if name != "grey":
            return real_masker(name, model)

        def fail(images: object, masks: object) -> object:
            raise ValueError("boom")  # a ValueError, which is not the caller's mistake here

        return fail  # type: ignore[return-value]

    monkeypatch.setattr(scoring, "cached_masker", masker_with_failing_grey)
    with caplog.at_level(logging.ERROR), ExplainClient(server.target, timeout=60) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.explain(explain_request(CHELSEA, masking="grey", segmentation="grid", num_samples=8))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        found = re.search(r"incident ([0-9a-f]{12})", caught.value.details())
        assert found and "boom" not in caught.value.details()
        logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
        assert "ValueError: boom" in caplog.text and "Traceback" in caplog.text

        response = client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=8))
        assert response.num_samples == 8 and response.masking == pb.MASKING_LAYER
    with grpc.insecure_channel(server.target) as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    internal = server.scrape().get(("layermask_requests_total", (("code", "INTERNAL"), ("rpc", "Explain"))), 0.0)
    assert internal >= 1


def test_message_size_limit(server: RunningServer) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
    big = png_bytes(noise)
    assert len(big) > 4 * 1024 * 1024
    with ExplainClient(server.target, timeout=60) as client, pytest.raises(grpc.RpcError) as caught:
        client.explain(explain_request(big, num_samples=8))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def perturbations(server: RunningServer) -> float:
    return server.perturbations()


def test_deadline_stops_the_compute(server: RunningServer) -> None:
    before = perturbations(server)
    with ExplainClient(server.target, timeout=1.5) as client, pytest.raises(grpc.RpcError) as caught:
        client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=5000))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Steady for 2 s (several batches' time), within 120 s: the batch in flight may still finish.
    stopped_at = wait_until_steady(server.perturbations, 2.0, 120, "the perturbation count")
    assert 0 < stopped_at - before < 1000  # it stopped early, not after the 5,000 rows


def test_cancellation_stops_the_compute(server: RunningServer) -> None:
    before = perturbations(server)
    with ExplainClient(server.target) as client:
        call = client.stub.Explain.future(explain_request(CHELSEA, segmentation="grid", num_samples=5000))
        wait_for(lambda: perturbations(server) > before, 120, "the explanation to start computing")
        call.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
    stopped_at = wait_until_steady(server.perturbations, 2.0, 120, "the perturbation count")
    assert stopped_at - before < 1000


def test_full_queue_is_refused_at_once(server: RunningServer) -> None:
    before = perturbations(server)
    with ExplainClient(server.target) as client:
        long = explain_request(CHELSEA, segmentation="grid", num_samples=5000)
        running = client.stub.Explain.future(long)
        # The first call holds the only compute slot, the second the only queue place.
        wait_for(lambda: perturbations(server) > before, 120, "the first call to start computing")
        queued = client.stub.Explain.future(long)
        wait_for(lambda: server.metric("layermask_queue_depth") == 1, 60, "the second call to be queued")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            client.explain(explain_request(CHELSEA, num_samples=8))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 10.0  # at once, not after the 5,000-sample call ahead of it
        assert "busy" in caught.value.details()
        # A bad request is refused for what is wrong with it, not as "busy" (which a client would
        # retry), and at once: its fields are checked before it would queue.
        for bad, field in ((explain_request(b"", num_samples=8), "image:"),
                           (explain_request(CHELSEA, num_samples=30_000), "num_samples:"),
                           (explain_request(CHELSEA, model="nope"), "nope")):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                client.explain(bad)
            assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), field
            assert field in caught.value.details() and time.monotonic() - started < 10.0
        running.cancel()
        queued.cancel()


def test_a_response_over_the_message_limit_is_refused_naming_the_fields(server: RunningServer) -> None:
    """Float16 heatmaps of 300 labels (30 MB) would outgrow the 4 MiB limit: gRPC failed the send."""
    request = explain_request(CHELSEA, segmentation="grid", num_samples=8, top_labels=300,
                              heatmap_format=pb.HEATMAP_FORMAT_FLOAT16)
    with ExplainClient(server.target, timeout=120) as client, pytest.raises(grpc.RpcError) as caught:
        client.explain(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("labels, top_labels, heatmap_format: the response would be")


def test_expired_deadlines_are_counted_as_such_and_nothing_is_left_unretrieved(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """A deadline that passes is recorded as DEADLINE_EXCEEDED (gRPC cancels the handler either way),
    and the stopped compute's exception is collected, not logged as "never retrieved"."""
    before = server.metric("layermask_requests_total", rpc="Explain", code="DEADLINE_EXCEEDED")
    wait_for(lambda: server.metric("layermask_inflight_requests") == 0, 120, "earlier calls to stop")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with ExplainClient(server.target, timeout=1.0) as client, pytest.raises(grpc.RpcError) as caught:
            client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=5000))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: server.metric("layermask_requests_total", rpc="Explain", code="DEADLINE_EXCEEDED") > before,
                 60, "the call to be recorded")
        wait_for(lambda: server.metric("layermask_inflight_requests") == 0, 120, "the compute to stop")
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_sigterm_drains_the_in_flight_call(tmp_path: object) -> None:
    command = [sys.executable, "-m", "layermask_service", "serve", "--host", "127.0.0.1", "--port", "0",
               "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--grace-seconds", "60"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stderr is not None
        port = None
        while port is None:
            line = process.stderr.readline()
            assert line, "server exited early"
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                    health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        result: dict[str, object] = {}
        started = threading.Event()

        def call() -> None:
            with ExplainClient(target, timeout=120) as client:
                result["response"] = client.explain_stream(
                    explain_request(CHELSEA, segmentation="grid", num_samples=120), lambda d, t: started.set())

        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(60)
        process.send_signal(signal.SIGTERM)
        caller.join(120)
        response = result["response"]
        assert isinstance(response, pb.ExplainResponse) and response.num_samples == 120
        with ExplainClient(target, timeout=5) as client, pytest.raises(grpc.RpcError):
            client.list_models()  # no new calls after SIGTERM
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
