"""The gRPC ExplainService over real loopback gRPC: results, streaming, health, reflection, metrics."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from skimage import data

import layermask
from layermask.models.images import decode_image
from layermask_service.backend import EmbeddedBackend
from layermask_service.client import ExplainClient, explain_request
from layermask_service.proto import explain_pb2 as pb
from layermask_service.translate import segments_from
from tests.helpers.service import RunningServer, png_bytes

CHELSEA = png_bytes(data.chelsea())


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[ExplainClient]:
    with ExplainClient(server.target, timeout=120) as c:
        yield c


def test_explain_equals_in_process_explain(client: ExplainClient, default_model: layermask.LoadedModel) -> None:
    request = explain_request(CHELSEA, segmentation="slic", segmentation_params={"n_segments": 30}, num_samples=40,
                              seed=3, top_labels=2, heatmap_format=pb.HEATMAP_FORMAT_FLOAT16)
    response = client.explain(request)
    local = layermask.explain(default_model, decode_image(CHELSEA), segmentation="slic",
                              segmentation_params={"n_segments": 30}, num_samples=40, seed=3, top_labels=2)
    assert [e.label for e in response.explanations] == local.labels
    for message in response.explanations:
        expected = local.explanations[message.label]
        assert np.array_equal(np.array(message.weights), expected.weights)
        assert message.intercept == expected.intercept and message.score == expected.score
    assert np.array_equal(segments_from(response.segments), local.segments)
    assert response.seed == 3 and response.num_samples == 40 and response.masking == pb.MASKING_LAYER
    heatmap = np.frombuffer(response.heatmaps[0].data, dtype="<f2").reshape(224, 224)
    assert np.allclose(heatmap, local.heatmap(local.labels[0]), atol=1e-3)
    assert response.timings.inference_seconds > 0 and response.timings.decode_seconds > 0


def test_stream_reports_progress_then_the_same_result(client: ExplainClient) -> None:
    request = explain_request(CHELSEA, segmentation="grid", num_samples=30, seed=5)
    events = list(client.stub.ExplainStream(request, timeout=120))
    progress = [(e.progress.done, e.progress.total) for e in events if e.HasField("progress")]
    assert progress[-1] == (30, 30) and all(t == 30 for _, t in progress)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert events[-1].HasField("result") and sum(e.HasField("result") for e in events) == 1
    streamed, unary = events[-1].result, client.explain(request)
    streamed.ClearField("timings")
    unary.ClearField("timings")
    assert streamed == unary


def test_png_overlay_heatmap(client: ExplainClient) -> None:
    response = client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=16,
                                              heatmap_format=pb.HEATMAP_FORMAT_PNG_OVERLAY))
    assert response.heatmaps[0].data.startswith(b"\x89PNG") and response.heatmaps[0].width == 224
    request = explain_request(CHELSEA, segmentation="grid", num_samples=16,
                              heatmap_format=pb.HEATMAP_FORMAT_PNG_OVERLAY)
    request.heatmap_view = pb.HEATMAP_VIEW_ORIGINAL
    heatmap = client.explain(request).heatmaps[0]
    assert (heatmap.height, heatmap.width) == (300, 451)  # the upload at its resolution
    with Image.open(io.BytesIO(heatmap.data)) as image:
        assert image.size == (451, 300)


def test_predict_with_mask_and_with_segments(client: ExplainClient) -> None:
    full = client.predict(pb.PredictRequest(image=CHELSEA))
    assert 281 <= full.predictions[0].label <= 285 and len(full.predictions) == 5
    ones = np.packbits(np.ones(224 * 224, dtype=np.uint8)).tobytes()
    assert client.predict(pb.PredictRequest(image=CHELSEA, mask=pb.PackedMask(height=224, width=224, bits=ones))) \
        == full
    hidden = pb.PredictRequest(image=CHELSEA, masking=pb.MASKING_GREY, top_k=3, segment_keep=pb.SegmentKeep(
        segmentation=pb.Segmentation(grid=pb.Grid(patch_size=112)), keep=[True, False, False, False]))
    partial = client.predict(hidden)
    assert len(partial.predictions) == 3 and partial.predictions != full.predictions[:3]


def test_list_models(client: ExplainClient) -> None:
    (model,) = client.list_models().models
    assert model.name == "efficientnet_lite0" and model.is_default
    assert (model.input_height, model.input_width, model.num_classes) == (224, 224, 1000)
    assert set(model.strategies) == {pb.MASKING_LAYER, pb.MASKING_GREY, pb.MASKING_BLACK, pb.MASKING_BLUR}


def test_reflection_lists_the_service(server: RunningServer) -> None:
    with server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in reply.list_services_response.service}
    assert "layermask.v1.ExplainService" in names and "grpc.health.v1.Health" in names


def test_health_goes_from_not_serving_to_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release = threading.Event()
    real_load = EmbeddedBackend.load

    def held_load(self: EmbeddedBackend) -> None:
        release.wait(60)
        real_load(self)

    monkeypatch.setattr(EmbeddedBackend, "load", held_load)
    running = RunningServer(wait=False)
    try:
        with running.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="layermask.v1.ExplainService")
            assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as caught:
                pb_client = ExplainClient(running.target, timeout=10)
                pb_client.explain(explain_request(CHELSEA, num_samples=8))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            running.run(running.server.wait_until_serving())
            assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
        running.stop()


def test_metrics_scrape_shows_the_calls(server: RunningServer, client: ExplainClient) -> None:
    def count(metrics: dict, name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    latency = {"model": "efficientnet_lite0", "masking": "grey", "rpc": "Explain", "code": "OK"}
    before = server.scrape()
    client.explain(explain_request(CHELSEA, masking="grey", segmentation="grid", num_samples=24))
    with pytest.raises(grpc.RpcError):
        client.explain(explain_request(CHELSEA, num_samples=1))
    after = server.scrape()
    assert count(after, "layermask_explain_latency_seconds_count", **latency) == \
        count(before, "layermask_explain_latency_seconds_count", **latency) + 1
    assert count(after, "layermask_requests_total", rpc="Explain", code="INVALID_ARGUMENT") == \
        count(before, "layermask_requests_total", rpc="Explain", code="INVALID_ARGUMENT") + 1
    for stage in ("decode", "segment", "inference", "fit"):
        assert count(after, "layermask_stage_seconds_count", stage=stage) > count(
            before, "layermask_stage_seconds_count", stage=stage)
    assert count(after, "layermask_perturbations_total", model="efficientnet_lite0") == \
        count(before, "layermask_perturbations_total", model="efficientnet_lite0") + 24
    assert count(after, "layermask_forward_batch_size_count") > count(before, "layermask_forward_batch_size_count")
    assert count(after, "layermask_model_load_seconds", model="efficientnet_lite0", format="torch",
                 provider="pytorch-cpu") > 0
    assert ("layermask_inflight_requests", ()) in after and ("layermask_queue_depth", ()) in after
    assert any(name == "layermask_build_info" for name, _ in after)
    assert time.time() > 0
