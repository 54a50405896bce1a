"""Hostile images over real gRPC: INVALID_ARGUMENT naming the problem, and the server keeps serving.

The images are made by the table-driven decoding tests (``tests/core/test_image_decoding.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from layermask_service.client import ExplainClient, explain_request
from layermask_service.proto import explain_pb2 as pb
from tests.core.test_image_decoding import (
    CORRUPT,
    LIMIT,
    NO_GIF,
    NOT_AN_IMAGE,
    animation,
    exif_rotated,
    gif_claiming,
    jpeg_claiming,
    noise,
    png_claiming,
    truncated,
    webp_claiming,
)
from tests.helpers.service import RunningServer


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer()
    yield running
    running.stop()


REFUSED = {
    "png bomb": (png_claiming(100_000, 100_000), LIMIT),
    "jpeg bomb": (jpeg_claiming(65_000, 65_000), LIMIT),
    "webp bomb": (webp_claiming("VP8X", 16_383, 16_383), LIMIT),
    "gif bomb": (gif_claiming(65_535, 65_535), NO_GIF),
    "truncated jpeg": (truncated(noise("JPEG"), 0.5), CORRUPT),
    "text": (b"GET / HTTP/1.1\r\n\r\n", NOT_AN_IMAGE),
}


def serving(server: RunningServer) -> bool:
    with grpc.insecure_channel(server.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("rpc", ["Predict", "Explain"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_hostile_image_is_an_invalid_argument(server: RunningServer, case: str, rpc: str) -> None:
    data, message = REFUSED[case]
    started = time.perf_counter()
    with ExplainClient(server.target, timeout=60) as client, pytest.raises(grpc.RpcError) as caught:
        if rpc == "Predict":
            client.predict(pb.PredictRequest(image=data))
        else:
            client.explain(explain_request(data, segmentation="grid", num_samples=8))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("image: ") and message in caught.value.details()
    assert time.perf_counter() - started < 10  # refused up front, not after decoding (generous: a loaded machine)
    assert serving(server)


def test_unusual_images_are_predicted(server: RunningServer) -> None:
    with ExplainClient(server.target, timeout=60) as client:
        for data in (exif_rotated("JPEG", 6), animation("WEBP", lossless=True), animation("PNG")):
            assert len(client.predict(pb.PredictRequest(image=data, top_k=3)).predictions) == 3
    assert serving(server)
