"""Health during shutdown: NOT_SERVING for good before the drain, and the health watcher stopped."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skimage import data

from layermask_service.client import ExplainClient, explain_request
from layermask_service.settings import Settings
from tests.helpers.service import RunningServer, png_bytes, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_stop_reports_not_serving_for_good_while_calls_drain() -> None:
    server = RunningServer(Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                    health_interval=0.05))
    stopping = None
    statuses: queue.Queue[int] = queue.Queue()
    try:
        with grpc.insecure_channel(server.target) as channel, ExplainClient(server.target) as client:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

            def follow() -> None:
                try:
                    for response in watch:
                        statuses.put(response.status)
                except grpc.RpcError:
                    pass

            threading.Thread(target=follow, daemon=True).start()
            assert statuses.get(timeout=60) == SERVING
            before = server.perturbations()
            running = client.stub.Explain.future(explain_request(png_bytes(data.chelsea()), segmentation="grid",
                                                                 num_samples=20_000))
            wait_for(lambda: server.perturbations() > before, 120, "the explanation to start computing")

            stopping = asyncio.run_coroutine_threadsafe(server.server.stop(60), server.loop)
            assert statuses.get(timeout=30) == NOT_SERVING
            wait_for(lambda: server.server._watching is not None and server.server._watching.done(), 30,
                     "the health watcher to stop")
            # What the watcher or a late model load would do: ignored once shutdown has begun.
            server.run(server.server._set_health(SERVING))
            progressed = server.perturbations()
            wait_for(lambda: server.perturbations() > progressed, 120, "the in-flight call to keep computing")
            assert statuses.empty(), "health left NOT_SERVING during the drain"
            assert not stopping.done(), "the server stopped before its in-flight call ended"
            running.cancel()
            watch.cancel()  # an open Watch stream is an in-flight call too: the drain would wait for it
            stopping.result(120)
    finally:
        if stopping is None or not stopping.done():
            server.stop()
        else:
            server.loop.call_soon_threadsafe(server.loop.stop)
            server.thread.join(10)


def test_wait_for_reports_what_it_waited_for() -> None:
    started = time.monotonic()
    try:
        wait_for(lambda: False, 0.2, "a condition that never holds")
    except TimeoutError as error:
        assert "a condition that never holds" in str(error)
        assert time.monotonic() - started >= 0.2
    else:
        raise AssertionError("wait_for returned for a condition that never held")
