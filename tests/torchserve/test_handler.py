"""The TorchServe handler on one mixed batch, driven in-process through TorchServe's own Context.

Every request of the batch must be answered with its own parameters (image, strategy, labels,
rows), with the rows of all requests sharing forward passes, and a bad request must be refused
alone. The same handler under a real TorchServe is tested in test_torchserve.py.
"""

from __future__ import annotations

import base64
import json
import logging
import re

import numpy as np
import pytest
from google.protobuf import json_format
from skimage import data
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

import layermask
from layermask.explanation import scoring
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.masking.strategies import Masker
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.proto import explain_pb2 as pb
from layermask_service.torchserve.archive import ArchiveSettings, model_config
from layermask_service.torchserve.handler import LayerMaskHandler
from layermask_service.torchserve.messages import masked_batch_request, probabilities_from
from layermask_service.torchserve.resources import METRICS, copy_resource
from tests.helpers.service import png_bytes

MAX_ROWS = 64


@pytest.fixture(scope="module")
def handler_and_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[LayerMaskHandler, Context]:
    metrics_file = copy_resource(METRICS, tmp_path_factory.mktemp("metrics"))
    metrics = MetricsCacheYamlImpl(str(metrics_file))
    metrics.initialize_cache()
    context = Context("efficientnet_lite0", str(tmp_path_factory.mktemp("model")), {"model": {}}, 8, None, "0.12.0",
                      metrics=metrics,
                      model_yaml_config=model_config("efficientnet_lite0", "torch",
                                                     ArchiveSettings(max_rows_per_forward=MAX_ROWS)))
    handler = LayerMaskHandler()
    handler.initialize(context)
    return handler, context


def _handle(handler: LayerMaskHandler, context: Context, batch: list[dict[str, object]],
            headers: list[dict[str, str]]) -> list[object]:
    context.request_processor = [RequestProcessor(h) for h in headers]
    context.metrics.set_request_ids({i: f"request-{i}" for i in range(len(batch))})
    return handler.handle(batch, context)


def _jobs(model: layermask.LoadedModel) -> list[ScoringJob]:
    rng = np.random.default_rng(0)
    cat, coffee = (model.preprocess(image).unsqueeze(0) for image in (data.chelsea(), data.coffee()))
    segments = np.arange(224 * 224).reshape(224, 224) // -(-224 * 224 // 10)
    rows = rng.integers(0, 2, (2, 8, 10), dtype=np.uint8)
    return [
        ScoringJob(cat, "layer", segments=segments, rows=rows[0], labels=(281, 285)),
        ScoringJob(coffee, "grey", segments=segments, rows=rows[1]),
        ScoringJob(coffee, "layer", masks=rng.integers(0, 2, (8, 224, 224), dtype=np.uint8), labels=(967,)),
    ]


def test_a_mixed_batch_answers_each_request_with_its_own_parameters(
        handler_and_context: tuple[LayerMaskHandler, Context], caplog: pytest.LogCaptureFixture) -> None:
    handler, context = handler_and_context
    model = handler.model
    assert model is not None
    jobs = _jobs(model)
    bad = masked_batch_request(jobs[0])
    bad.keep.columns = 3
    explain_body = {"image": base64.b64encode(png_bytes(data.chelsea())).decode(),
                    "segmentation": {"grid": {"patch_size": 56}}, "num_samples": 24, "seed": 5, "top_labels": 2}
    batch: list[dict[str, object]] = [
        {"masked_batch": bytearray(masked_batch_request(job).SerializeToString())} for job in jobs]
    batch += [{"masked_batch": bytearray(bad.SerializeToString())}, {"body": explain_body},
              {"body": bytearray(png_bytes(data.coffee()))}, {"model_info": bytearray()}]
    headers = [{}] * 5 + [{"explain": "False"}] * 2
    with caplog.at_level(logging.INFO):
        responses = _handle(handler, context, batch, headers)

    for job, response in zip(jobs, responses[:3]):
        message = bpb.MaskedBatchResponse.FromString(response)  # type: ignore[arg-type]
        expected = score_jobs(model, [job], MAX_ROWS)[0]
        assert list(message.labels) == list(job.labels or [])
        np.testing.assert_allclose(probabilities_from(message, 8, expected.shape[1]), expected, rtol=0, atol=1e-5)

    refused = bpb.MaskedBatchResponse.FromString(responses[3])  # type: ignore[arg-type]
    assert refused.error.status == 400 and refused.error.message.startswith("keep: ")
    assert context.get_response_status(3)[0] == 400 and context.get_response_status(0)[0] == 200

    explanation = json.loads(responses[4])  # type: ignore[arg-type]
    alone = layermask.explain(model, data.chelsea(), segmentation="grid", segmentation_params={"patch_size": 56},
                              num_samples=24, seed=5, top_labels=2)
    assert [e["label"] for e in explanation["explanations"]] == alone.labels
    for entry in explanation["explanations"]:
        np.testing.assert_allclose(entry["weights"], alone.explanations[entry["label"]].weights, rtol=0, atol=1e-5)
    assert explanation["masking"] == "MASKING_LAYER"

    assert json.loads(responses[5])[0]["label"] == 967  # type: ignore[arg-type]
    description = bpb.ModelDescription.FromString(responses[6])  # type: ignore[arg-type]
    assert description.name == "efficientnet_lite0" and len(description.class_names) == 1000

    # One pass for the layer rows of both masked batches and the prediction (8 + 8 + 1), one for the
    # grey batch; then the explanation's unmasked row and its 24 rows.
    rows = [int(float(m)) for m in re.findall(r"\[METRICS\]RowsPerForward\.\w+:([\d.]+)", caplog.text)]
    assert rows == [17, 8, 1, 24]


def test_a_bad_explanation_request_is_refused_alone(handler_and_context: tuple[LayerMaskHandler, Context]) -> None:
    handler, context = handler_and_context
    good = {"image": base64.b64encode(png_bytes(data.chelsea())).decode(),
            "segmentation": {"grid": {}}, "num_samples": 8}
    responses = _handle(handler, context, [{"body": {**good, "num_samples": 1}}, {"body": good},
                                           {"body": {**good, "model": "resnet50"}}, {"body": bytearray(b"not a png")}],
                        [{"explain": "True"}] * 4)
    assert context.get_response_status(0) == (400, json.loads(responses[0])["message"])  # type: ignore[arg-type]
    assert json.loads(responses[0])["message"].startswith("num_samples: ")  # type: ignore[arg-type]
    parsed = json_format.Parse(responses[1], pb.ExplainResponse())  # type: ignore[arg-type]
    assert parsed.num_samples == 8 and context.get_response_status(1)[0] == 200
    assert context.get_response_status(2)[0] == 404
    assert context.get_response_status(3)[0] == 400 and "image" in context.get_response_status(3)[1]


def test_a_failing_computation_answers_500_with_an_incident_id(
        handler_and_context: tuple[LayerMaskHandler, Context], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    handler, context = handler_and_context
    model = handler.model
    assert model is not None
    real_masker = scoring.cached_masker

    def masker_with_failing_grey(name: str, loaded: layermask.LoadedModel) -> Masker:
        if name != "grey":
            return real_masker(name, loaded)

        def fail(images: object, masks: object) -> object:
            raise ValueError("boom")

        return fail  # type: ignore[return-value]

    monkeypatch.setattr(scoring, "cached_masker", masker_with_failing_grey)
    grey = _jobs(model)[1]
    bad = masked_batch_request(grey)
    bad.keep.columns = 3
    explain_body = {"image": base64.b64encode(png_bytes(data.chelsea())).decode(), "masking": "MASKING_GREY",
                    "segmentation": {"grid": {}}, "num_samples": 8}
    batch: list[dict[str, object]] = [{"masked_batch": bytearray(masked_batch_request(grey).SerializeToString())},
                                      {"masked_batch": bytearray(bad.SerializeToString())},
                                      {"body": explain_body}, {"body": {**explain_body, "kernel_width": -1}}]
    with caplog.at_level(logging.ERROR):
        responses = _handle(handler, context, batch, [{}, {}, {"explain": "True"}, {"explain": "True"}])

    failed = bpb.MaskedBatchResponse.FromString(responses[0])  # type: ignore[arg-type]
    refused = bpb.MaskedBatchResponse.FromString(responses[1])  # type: ignore[arg-type]
    assert failed.error.status == 500 and context.get_response_status(0)[0] == 500
    assert refused.error.status == 400 and refused.error.message.startswith("keep: ")
    explained = json.loads(responses[2])  # type: ignore[arg-type]
    assert explained["code"] == 500 and context.get_response_status(2) == (500, explained["message"])
    assert json.loads(responses[3])["message"].startswith("kernel_width: ")  # type: ignore[arg-type]
    assert context.get_response_status(3)[0] == 400
    for message in (failed.error.message, explained["message"]):
        incident = re.search(r"incident ([0-9a-f]{12})", message)
        assert incident and "boom" not in message
        logged = [r for r in caplog.records if incident.group(1) in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None and "ValueError: boom" in caplog.text

    layer = _jobs(model)[0]  # the handler goes on serving
    ok = _handle(handler, context, [{"masked_batch": bytearray(masked_batch_request(layer).SerializeToString())}], [{}])
    assert not bpb.MaskedBatchResponse.FromString(ok[0]).HasField("error")  # type: ignore[arg-type]
