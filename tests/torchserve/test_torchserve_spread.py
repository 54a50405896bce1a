"""One service, several TorchServes: the masked batches are spread over every address.

Two real TorchServes on free loopback ports serve the session's archive; the service's
``torchserve_target`` lists both. Each must receive masked batches, and the image and segments
of an explanation once each (the later batches name them by digest); when one TorchServe stops,
explanations go on through the other and the service stays SERVING.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

from layermask_service.client import ExplainClient, explain_request
from layermask_service.torchserve.process import TorchServeProcess
from tests.helpers.service import LOOPBACK, RunningServer, png_bytes, wait_for
from tests.helpers.torchserve import MODEL

CHELSEA = png_bytes(data.chelsea())
SAMPLES, BATCH = 128, 32
CALLS = 1 + SAMPLES // BATCH  # per explanation: the unmasked image, then 4 batches of perturbations
IMAGE_BYTES = 602_112  # 3×224×224 float32: what a batch carrying the image weighs, at least
SERVING = health_pb2.HealthCheckResponse.SERVING


def _inference_requests(torchserve: TorchServeProcess) -> float:
    """``ts_inference_requests_total`` of the model on TorchServe's own ``/metrics``."""
    with urllib.request.urlopen(torchserve.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "ts_inference_requests_total" and sample.labels.get("model_name") == MODEL)


def _health(server: RunningServer) -> int:
    with server.channel() as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _service(target: str) -> RunningServer:
    return RunningServer(dataclasses.replace(LOOPBACK, backend="torchserve", torchserve_target=target,
                                             batch_size=BATCH, health_interval=0.5))


def _explain(server: RunningServer, seed: int) -> float:
    """One explanation through ``server``; the bytes it sent to TorchServe."""
    before = server.metric("layermask_backend_request_bytes_total", model=MODEL)
    with ExplainClient(server.target, timeout=180) as client:
        response = client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=SAMPLES, seed=seed))
    assert response.num_samples == SAMPLES and response.explanations[0].label in range(281, 286)  # a cat
    return server.metric("layermask_backend_request_bytes_total", model=MODEL) - before


@pytest.mark.slow
def test_batches_spread_over_two_torchserves_and_survive_one_stopping(model_store: Path) -> None:
    processes = [TorchServeProcess(model_store, [MODEL], free_ports=True) for _ in range(2)]
    server = None
    try:
        with ThreadPoolExecutor(2) as pool:  # 30-90 s each on a loaded machine: start both at once
            list(pool.map(lambda process: process.start(timeout=400), processes))
        server = _service(",".join(process.grpc_target for process in processes))
        requests_before = [_inference_requests(process) for process in processes]
        for seed in range(3):
            sent = _explain(server, seed)
            # Each TorchServe got the image and segments once, then digests: not CALLS × the image.
            assert 2 * IMAGE_BYTES < sent < 2 * (IMAGE_BYTES + 10_000) + CALLS * 1_000, sent
        wait_for(lambda: sum(_inference_requests(p) for p in processes) - sum(requests_before) >= 3 * CALLS, 30,
                 "TorchServe's request counters to count every batch")
        received = [_inference_requests(p) - before for p, before in zip(processes, requests_before)]
        assert sum(received) == 3 * CALLS and min(received) >= CALLS, received  # round-robin: 7 and 8

        processes[1].close()  # a pod goes away
        still_serving = processes[0]
        before = _inference_requests(still_serving)
        for seed in range(3, 5):
            assert _explain(server, seed) < 2 * (IMAGE_BYTES + 10_000) + CALLS * 1_000
            assert _health(server) == SERVING
        wait_for(lambda: _inference_requests(still_serving) - before >= 2 * CALLS, 30,
                 "the remaining TorchServe to count every batch")
        deadline = time.monotonic() + 3  # several health checks (every 0.5 s) later, still SERVING
        while time.monotonic() < deadline:
            assert _health(server) == SERVING
            time.sleep(0.25)
    finally:
        if server is not None:
            server.stop()
        for process in processes:
            process.close()


def test_a_dns_name_is_resolved_by_the_service(torchserve: TorchServeProcess) -> None:
    port = torchserve.grpc_target.rsplit(":", 1)[1]
    server = _service(f"dns:///localhost:{port}")
    try:
        assert f"127.0.0.1:{port}" in server.server.backend.endpoints.addresses()
        sent = _explain(server, seed=1)
        assert IMAGE_BYTES < sent < 2 * (IMAGE_BYTES + 10_000) + CALLS * 1_000
        assert _health(server) == SERVING
    finally:
        server.stop()
