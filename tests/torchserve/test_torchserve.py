"""The service's TorchServe backend and the handler under a real TorchServe on free loopback ports.

TorchServe (Java frontend and Python worker) is started from a freshly built ``.mar`` and stopped
afterwards, also when a test fails.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

import layermask
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.models.images import decode_image
from layermask_service.cli import main
from layermask_service.client import ExplainClient, explain_request
from layermask_service.metrics import Metrics
from layermask_service.proto import explain_pb2 as pb
from layermask_service.settings import Settings
from layermask_service.torchserve.backend import TorchServeBackend
from layermask_service.torchserve.process import TorchServeProcess, free_port
from tests.helpers.service import LOOPBACK, RunningServer, png_bytes, wait_for
from tests.helpers.torchserve import MODEL

CHELSEA = png_bytes(data.chelsea())
COFFEE = png_bytes(data.coffee())


def _service(torchserve: TorchServeProcess, **overrides: object) -> RunningServer:
    settings = dataclasses.replace(LOOPBACK, backend="torchserve", torchserve_target=torchserve.grpc_target,
                                   health_interval=0.5, **overrides)  # type: ignore[arg-type]
    return RunningServer(settings)


def _health(server: RunningServer) -> int:
    with server.channel() as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _wait_for_health(server: RunningServer, status: int, timeout: float) -> float:
    started = time.monotonic()
    while _health(server) != status:
        assert time.monotonic() - started < timeout, f"health did not become {status} within {timeout} s"
        time.sleep(0.2)
    return time.monotonic() - started


def _assert_same_weights(response: pb.ExplainResponse, local: layermask.Explanation) -> None:
    assert [e.label for e in response.explanations] == local.labels
    for message in response.explanations:
        np.testing.assert_allclose(message.weights, local.explanations[message.label].weights, rtol=0, atol=1e-5)


def test_explain_through_torchserve_equals_the_embedded_result(torchserve: TorchServeProcess,
                                                                default_model: layermask.LoadedModel) -> None:
    server = _service(torchserve)
    try:
        with ExplainClient(server.target, timeout=120) as client:
            for masking in ("layer", "grey"):
                request = explain_request(CHELSEA, masking=masking, segmentation="grid",
                                          segmentation_params={"patch_size": 32}, num_samples=60, seed=7, top_labels=2)
                response = client.explain(request)
                local = layermask.explain(default_model, decode_image(CHELSEA), masking=masking, segmentation="grid",
                                          segmentation_params={"patch_size": 32}, num_samples=60, seed=7, top_labels=2)
                _assert_same_weights(response, local)
            models = client.stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            assert [(m.name, m.num_classes) for m in models] == [(MODEL, 1000)]
    finally:
        server.stop()


def _post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_torchserve_rest_api_gives_layer_masked_explanations(torchserve: TorchServeProcess,
                                                             default_model: layermask.LoadedModel) -> None:
    body = {"image": base64.b64encode(CHELSEA).decode(), "segmentation": {"slic": {"n_segments": 25}},
            "num_samples": 40, "seed": 2}
    status, payload = _post(f"{torchserve.inference_url}/explanations/{MODEL}", json.dumps(body).encode(),
                            "application/json")
    assert status == 200, payload
    explanation = json.loads(payload)
    assert explanation["masking"] == "MASKING_LAYER" and explanation["num_samples"] == 40
    local = layermask.explain(default_model, decode_image(CHELSEA), segmentation="slic",
                              segmentation_params={"n_segments": 25}, num_samples=40, seed=2)
    assert [e["label"] for e in explanation["explanations"]] == local.labels
    np.testing.assert_allclose(explanation["explanations"][0]["weights"], local.explanations[local.labels[0]].weights,
                               rtol=0, atol=1e-5)

    status, payload = _post(f"{torchserve.inference_url}/predictions/{MODEL}", COFFEE, "application/octet-stream")
    assert status == 200 and json.loads(payload)[0]["label"] == 967  # espresso

    status, payload = _post(f"{torchserve.inference_url}/explanations/{MODEL}",
                            json.dumps({**body, "keep_probability": 2}).encode(), "application/json")
    assert status == 400 and json.loads(payload)["message"].startswith("keep_probability: ")


def _histogram_buckets(torchserve: TorchServeProcess, name: str) -> dict[str, float]:
    """The cumulative bucket counts of one of the handler's histograms on TorchServe's /metrics."""
    with urllib.request.urlopen(torchserve.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {sample.labels["le"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == name for sample in family.samples
            if sample.name.endswith("_bucket") and sample.labels.get("ModelName") == MODEL}


def test_concurrent_explanations_share_forward_passes(torchserve: TorchServeProcess,
                                                      default_model: layermask.LoadedModel) -> None:
    server = _service(torchserve, max_concurrent=4, batch_size=8)
    arguments = [dict(masking="layer", seed=1), dict(masking="layer", seed=2, labels=[283]),
                 dict(masking="blur", seed=3), dict(masking="layer", seed=4, top_labels=2)]
    responses: dict[int, pb.ExplainResponse] = {}

    def call(index: int) -> None:
        a = arguments[index]
        request = explain_request(CHELSEA if index % 2 == 0 else COFFEE, segmentation="grid", num_samples=48,
                                  masking=a["masking"], seed=a["seed"], labels=a.get("labels"),
                                  top_labels=a.get("top_labels"))
        with ExplainClient(server.target, timeout=180) as client:
            responses[index] = client.explain(request)

    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(arguments))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
    finally:
        server.stop()
    assert sorted(responses) == [0, 1, 2, 3]
    for index, a in enumerate(arguments):  # each request kept its own image, strategy, seed and labels
        image = decode_image(CHELSEA if index % 2 == 0 else COFFEE)
        local = layermask.explain(default_model, image, segmentation="grid", num_samples=48, **a)  # type: ignore[arg-type]
        _assert_same_weights(responses[index], local)
    buckets = _histogram_buckets(torchserve, "RowsPerForward")
    # The service sends 8 rows per request; a forward pass of more than 10 rows joined several requests.
    assert buckets["+Inf"] > buckets["10.0"], buckets
    assert _histogram_buckets(torchserve, "HandlerLatency")["+Inf"] > 0


def test_masked_batches_from_an_onnx_archive(tmp_path: Path, default_model: layermask.LoadedModel) -> None:
    assert main(["archive", "--model", MODEL, "--format", "onnx", "-o", str(tmp_path)]) == 0
    with zipfile.ZipFile(tmp_path / f"{MODEL}.mar") as archive:
        assert f"{MODEL}.onnx" in archive.namelist()
        assert yaml.safe_load(archive.read("model-config.yaml"))["layermask"]["format"] == "onnx"
    with TorchServeProcess(tmp_path, [MODEL], free_ports=True) as process:
        backend = TorchServeBackend(Settings(backend="torchserve", torchserve_target=process.grpc_target), Metrics())
        backend.load()
        served = backend.models[MODEL]
        rng = np.random.default_rng(0)
        job = ScoringJob(default_model.preprocess(data.chelsea()).unsqueeze(0), "layer",
                         masks=rng.integers(0, 2, (8, 224, 224), dtype=np.uint8))
        remote = backend.scorer(served)(job)
        backend.close()
    local = score_jobs(default_model, [job], 8)[0]
    assert remote.shape == (8, 1000)
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-4)
    assert (remote.argmax(1) == local.argmax(1)).all()


def test_archive_holds_handler_weights_and_batching_config(tmp_path: Path) -> None:
    assert main(["archive", "--model", MODEL, "-o", str(tmp_path), "--batch-size", "4", "--max-batch-delay", "20",
                 "--workers", "2", "--response-timeout", "300"]) == 0
    with zipfile.ZipFile(tmp_path / f"{MODEL}.mar") as archive:
        names = set(archive.namelist())
        assert {"layermask_handler.py", f"{MODEL}.pt", "model-config.yaml", "MAR-INF/MANIFEST.json"} <= names
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert config["batchSize"] == 4 and config["maxBatchDelay"] == 20 and config["responseTimeout"] == 300
    assert config["minWorkers"] == config["maxWorkers"] == 2 and config["layermask"]["model"] == MODEL


def test_archive_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["archive", "--model", "no_such_model", "-o", str(tmp_path)]) == 2
    assert main(["archive", "--model", MODEL, "--batch-size", "0", "-o", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "no_such_model" in errors[0] and "batch-size" in errors[1]


def test_unreachable_torchserve_is_unavailable_with_a_clear_message() -> None:
    settings = dataclasses.replace(LOOPBACK, backend="torchserve", torchserve_target=f"127.0.0.1:{free_port()}",
                                   torchserve_timeout=2.0)
    server = RunningServer(settings, wait=False)
    try:
        wait_for(lambda: "waiting for TorchServe" in server.server.backend.waiting_for, 60,
                 "the backend to report that TorchServe does not answer")
        assert _health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        with ExplainClient(server.target, timeout=10) as client, pytest.raises(grpc.RpcError) as raised:
            client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=8))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "TorchServe" in raised.value.details() and settings.torchserve_target in raised.value.details()
    finally:
        server.stop()


@pytest.mark.slow
def test_killing_torchserve_mid_run_gives_unavailable_then_the_service_recovers(model_store: Path) -> None:
    process = TorchServeProcess(model_store, [MODEL], free_ports=True)
    server = None
    try:
        process.start()
        server = _service(process)
        request = explain_request(CHELSEA, segmentation="grid", num_samples=800, seed=1)
        killed_at = 0.0
        with ExplainClient(server.target, timeout=120) as client, pytest.raises(grpc.RpcError) as raised:
            for event in client.stub.ExplainStream(request, timeout=120):
                if event.HasField("progress") and not killed_at:
                    process.kill()
                    killed_at = time.monotonic()
        assert killed_at and time.monotonic() - killed_at < 15, "the call hung after TorchServe died"
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "TorchServe" in raised.value.details()
        _wait_for_health(server, health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10)

        process.start()
        _wait_for_health(server, health_pb2.HealthCheckResponse.SERVING, timeout=30)
        with ExplainClient(server.target, timeout=120) as client:
            response = client.explain(explain_request(CHELSEA, segmentation="grid", num_samples=16))
        assert response.num_samples == 16 and response.explanations[0].label in range(281, 286)
    finally:
        if server is not None:
            server.stop()
        process.close()
