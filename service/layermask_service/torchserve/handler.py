"""TorchServe handler serving one layermask model: masked batches, predictions and explanations.

Lifecycle: :meth:`LayerMaskHandler.initialize` loads the model named in the archive's
``model-config.yaml`` (section ``layermask``) from the archived weights; :meth:`handle` takes
one TorchServe batch. Every request in it is read with its own parameters, then the rows of all
requests share forward passes of at most ``max_rows_per_forward`` rows:

- ``masked_batch`` (a ``MaskedBatchRequest``, what the service's TorchServe backend sends):
  class probabilities per row, as a ``MaskedBatchResponse``;
- ``model_info``: the served model's ``ModelDescription``;
- ``/explanations`` (or a JSON ``ExplainRequest`` on ``/predictions``): a full layer-masked
  explanation (LIME, KernelSHAP or occlusion: ``"method"``) as the JSON form of ``ExplainResponse``;
  the request may also say ``"num_samples": "auto"`` and name methods as the Python API does
  (:func:`~layermask_service.translate.explain_request_from_json`);
- a bare image on ``/predictions``: its top five classes as JSON.

A bad request gets its own 4xx status and a JSON error naming the field; the rest of the batch
is unaffected. A failure of the computation (a bug) gets status 500 with an incident id, which the
log holds with the traceback. All logic lives in ``layermask`` and ``layermask_service``; this only
translates.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from ts.metrics.metric_type_enum import MetricTypes

from layermask.allocator import keep_freed_memory
from layermask.devices import torchserve_device
from layermask.errors import InvalidOptionError
from layermask.explanation.lime import ExplanationPlan, explain_many, plan_explanation
from layermask.explanation.result import Explanation
from layermask.explanation.scoring import ScoringJob, score_jobs
from layermask.masking.strategies import cached_masker
from layermask.models.registry import LoadedModel, load_model
from layermask.onnx.runtime import PREFERRED_PROVIDERS, load_onnx_model
from layermask_service.errors import InvalidArgument, report_internal_error
from layermask_service.methods import check_occlusion_rows
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.proto import explain_pb2 as pb
from layermask_service.result_cache import weights_digest
from layermask_service.settings import MAX_SAMPLES
from layermask_service.torchserve.context_cache import (
    DEFAULT_CACHE_ENTRIES,
    UNKNOWN_DIGEST_STATUS,
    ContextCache,
    UnknownContext,
)
from layermask_service.torchserve.messages import masked_batch_response, model_description, scoring_job
from layermask_service.translate import (
    HeatmapChoice,
    explain_job,
    explain_request_from_json,
    explain_response,
    image_from,
)

log = logging.getLogger(__name__)
TOP_PREDICTIONS = 5


class LayerMaskHandler:
    """TorchServe's entry point: ``initialize(context)`` once per worker, then ``handle(data, context)`` per batch."""

    # TorchServe loads the one class defined at the top of this module, so the kinds of request
    # read from a batch are nested here.
    @dataclass
    class Failure:
        status: int
        message: str

    @dataclass
    class Scoring:
        job: ScoringJob
        predict: bool  # a bare image: answer with the top classes as JSON

    @dataclass
    class Explaining:
        plan: ExplanationPlan
        heatmap_format: HeatmapChoice  # the request's format and view
        decode_seconds: float

    Request = Failure | Scoring | Explaining | bytes

    def __init__(self) -> None:
        self.model: LoadedModel | None = None
        self.weights_digest = ""
        self.max_rows = 64
        self.max_samples = MAX_SAMPLES
        self.contexts = ContextCache()  # images and segments of recent explanations, by digest
        self.initialized = False

    def initialize(self, context: Any) -> None:
        keep_freed_memory()  # this worker process only runs forward passes
        settings = (context.model_yaml_config or {}).get("layermask") or {}
        if "model" not in settings:
            raise ValueError("model-config.yaml has no layermask.model; build the archive with `layermask archive`")
        serialized = (context.manifest or {}).get("model", {}).get("serializedFile")
        weights = Path(context.system_properties["model_dir"]) / serialized if serialized else None
        # The GPU TorchServe assigned this worker, if any. Unmeasured: no GPU TorchServe has run this;
        # the device and provider options chosen from it are tested by inspection.
        gpu_id = context.system_properties.get("gpu_id")
        if settings.get("format", "torch") == "onnx":
            if weights is None:
                raise ValueError("an ONNX archive needs its .onnx file as the serialized file")
            providers = tuple(settings.get("onnx_providers") or PREFERRED_PROVIDERS)
            self.model = load_onnx_model(weights, providers, device_id=gpu_id)
        else:
            device = torchserve_device(gpu_id, torch.cuda.is_available())
            self.model = load_model(settings["model"], weights).to(device)
        self.weights_digest = weights_digest(self.model)  # for the service's result cache (model_info)
        cached_masker("layer", self.model)  # convert once, at load
        self.max_rows = int(settings.get("max_rows_per_forward", self.max_rows))
        self.max_samples = int(settings.get("max_samples", self.max_samples))
        self.contexts = ContextCache(int(settings.get("context_cache_entries", DEFAULT_CACHE_ENTRIES)))
        if settings.get("torch_threads"):
            torch.set_num_threads(int(settings["torch_threads"]))
        self.initialized = True
        log.info("layermask model %s (%s, %s) ready; up to %d rows per forward", self.model.name, self.model.format,
                 getattr(self.model.masked_runtime, "provider", self.model.device), self.max_rows)

    # -------------------------------------------------------------- requests
    def _read(self, index: int, item: dict[str, Any], context: Any) -> LayerMaskHandler.Request:
        assert self.model is not None
        try:
            if "masked_batch" in item:
                request = bpb.MaskedBatchRequest.FromString(bytes(item["masked_batch"]))
                return self.Scoring(scoring_job(request, self.model, self.contexts), predict=False)
            if "model_info" in item:
                return model_description(self.model, self.weights_digest).SerializeToString()
            payload = item.get("body", item.get("data"))
            explain = context.get_request_header(index, "explain") == "True"
            if isinstance(payload, dict) or explain:
                return self._plan(payload)
            if not isinstance(payload, bytes | bytearray):
                raise InvalidArgument("body: send an image, a JSON ExplainRequest or a masked_batch")
            image = self.model.preprocess(image_from(bytes(payload), "body")).unsqueeze(0)
            masks = np.ones((1, *self.model.input_size), dtype=np.uint8)
            return self.Scoring(ScoringJob(image, "layer", masks=masks), predict=True)
        except InvalidArgument as error:
            return self.Failure(400, str(error))
        except UnknownContext as error:
            return self.Failure(UNKNOWN_DIGEST_STATUS, str(error))
        except (DecodeError, json_format.ParseError) as error:  # not the message it claims to be
            return self.Failure(400, f"{'masked_batch' if 'masked_batch' in item else 'body'}: {error}")
        except Exception:
            return self.Failure(500, report_internal_error(log, "reading a request"))

    def _plan(self, payload: Any) -> LayerMaskHandler.Request:
        assert self.model is not None
        started = time.perf_counter()
        if isinstance(payload, dict):
            request = explain_request_from_json(payload)
        elif isinstance(payload, bytes | bytearray):
            request = pb.ExplainRequest(image=bytes(payload))
        else:
            raise InvalidArgument("body: send an image or a JSON ExplainRequest")
        if request.model and request.model != self.model.name:
            return self.Failure(404, f"model: this handler serves {self.model.name!r}, not {request.model!r}")
        job = explain_job(request, self.model.name, self.max_samples)
        check_occlusion_rows(job.options, self.model.input_size, self.max_samples)
        try:
            plan = plan_explanation(self.model, job.image, job.options)
        except InvalidOptionError as error:
            raise job.request_error(error) from None
        return self.Explaining(plan, job.heatmap_format, time.perf_counter() - started)

    # --------------------------------------------------------------- batches
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        assert self.model is not None, "initialize() first"
        started = time.perf_counter()
        requests = [self._read(i, item, context) for i, item in enumerate(data)]
        responses: list[Any] = [r if isinstance(r, bytes) else None for r in requests]

        def record_forward(rows: int) -> None:
            self._metric(context, "RowsPerForward", rows)

        # The requests of each kind share forward passes, so a failure fails them all.
        scoring = [(i, r) for i, r in enumerate(requests) if isinstance(r, LayerMaskHandler.Scoring)]
        try:
            results = score_jobs(self.model, [r.job for _, r in scoring], self.max_rows, record_forward)
            for (i, scored), probabilities in zip(scoring, results):
                responses[i] = self._predictions(probabilities[0]) if scored.predict else \
                    masked_batch_response(probabilities, scored.job.labels).SerializeToString()
        except Exception:
            self._fail(requests, [i for i, _ in scoring], "scoring masked batches")

        planned = [(i, r) for i, r in enumerate(requests) if isinstance(r, LayerMaskHandler.Explaining)]
        try:
            explanations: list[Explanation] = explain_many(self.model, [r.plan for _, r in planned], self.max_rows,
                                                           record_forward)
            for (i, explained), explanation in zip(planned, explanations):
                message = explain_response(explanation, explained.heatmap_format, explained.decode_seconds)
                responses[i] = json_format.MessageToJson(message, preserving_proto_field_name=True)
        except Exception:
            self._fail(requests, [i for i, _ in planned], "computing explanations")

        for i, (item, request) in enumerate(zip(data, requests)):
            if isinstance(request, LayerMaskHandler.Failure):
                context.set_response_status(request.status, _status_phrase(request.message), i)  # REST only
                error = bpb.HandlerError(status=request.status, message=request.message)
                responses[i] = bpb.MaskedBatchResponse(error=error).SerializeToString() if "masked_batch" in item \
                    else json.dumps({"code": request.status, "message": request.message})
        self._metric(context, "HandlerLatency", time.perf_counter() - started)
        return responses

    def _fail(self, requests: list[LayerMaskHandler.Request], indices: list[int], during: str) -> None:
        """Answer ``requests[indices]`` with status 500 and one incident id, logged with the exception being handled."""
        failure = self.Failure(500, report_internal_error(log, during))
        for i in indices:
            requests[i] = failure

    def _predictions(self, probabilities: np.ndarray) -> str:
        assert self.model is not None
        top = np.argsort(-probabilities, kind="stable")[:TOP_PREDICTIONS]
        return json.dumps([{"label": int(i), "name": self.model.class_names[int(i)],
                            "probability": float(probabilities[i])} for i in top])

    def _metric(self, context: Any, name: str, value: float) -> None:
        """Add to a histogram declared in the metrics config (model_store/metrics.yaml)."""
        metric = context.metrics.get_metric(name, MetricTypes.HISTOGRAM)
        metric.add_or_update(value, dimension_values=[context.model_name, "Model"])


_ASCII_SPELLINGS = str.maketrans({"×": "x", "…": "...", "²": "^2", "—": "-", "–": "-"})


def _status_phrase(message: str) -> str:
    """``message`` in ASCII for TorchServe's HTTP status phrase.

    TorchServe 0.12's worker frames the phrase with its length in characters but sends its UTF-8
    bytes, so one non-ASCII character corrupts the frame and the frontend drops the worker.
    """
    return message.translate(_ASCII_SPELLINGS).encode("ascii", "replace").decode("ascii")
