"""The TorchServe backend: masked batches run in TorchServe, through its gRPC inference API.

Decoding, segmentation, sampling and the ridge fits stay in the service; each batch of
perturbations goes to layermask's TorchServe handler as one ``MaskedBatchRequest`` (the
``masked_batch`` input of ``Predictions``), so that TorchServe can batch the rows of concurrent
explanations into shared forward passes. The served model's preprocessing and class names come
from the handler (``model_info``), so they cannot drift from what TorchServe runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import numpy as np

from layermask.explanation.scoring import Scorer, ScoringJob
from layermask.models.registry import LoadedModel
from layermask_service.backend import Backend
from layermask_service.errors import BackendFailed, BackendUnavailable
from layermask_service.metrics import Metrics
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.proto import inference_pb2 as ts
from layermask_service.settings import Settings
from layermask_service.torchserve.context_cache import UNKNOWN_DIGEST_STATUS
from layermask_service.torchserve.endpoints import Endpoint, Endpoints, Unreachable
from layermask_service.torchserve.messages import (
    described_model,
    digest_only_request,
    masked_batch_request,
    probabilities_from,
    with_context_digest,
)

log = logging.getLogger("layermask.torchserve")
PING_TIMEOUT_SECONDS = 2.0
T = TypeVar("T")
Context = tuple[object, object, str]  # the image and segments of a ScoringJob, and their digest


class TorchServeBackend(Backend):
    """Models served by TorchServe at ``settings.torchserve_target``: one gRPC inference address, a
    list of them, or a ``dns:///`` name (see :mod:`~layermask_service.torchserve.endpoints`), the
    calls spread round-robin over the addresses."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.target = settings.torchserve_target
        limit = settings.max_message_bytes
        self.endpoints = Endpoints(self.target, options=[("grpc.max_receive_message_length", limit),
                                                         ("grpc.max_send_message_length", limit)])
        self._closed = False

    def _through_any(self, model: str, attempt: Callable[[Endpoint], T]) -> T:
        """``attempt`` on an address that answers (see :meth:`Endpoints.call`), errors as the service's."""
        try:
            return self.endpoints.call(attempt)
        except Unreachable as error:
            raise BackendUnavailable(f"TorchServe at {self.target} failed for model {model!r}: {error}") from None
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise BackendFailed(f"TorchServe refused the request: {details}") from None
            raise BackendUnavailable(f"TorchServe at {self.target} failed for model {model!r}: "
                                     f"{code.name}: {details}") from None

    @staticmethod
    def _predict_at(endpoint: Endpoint, model: str, key: str, payload: bytes, timeout: float) -> bytes:
        request = ts.PredictionsRequest(model_name=model, input={key: payload})
        return bytes(endpoint.stub.Predictions(request, timeout=timeout).prediction)

    def _predictions(self, model: str, key: str, payload: bytes, timeout: float) -> bytes:
        return self._through_any(model, lambda endpoint: self._predict_at(endpoint, model, key, payload, timeout))

    def _describe(self, name: str) -> LoadedModel:
        payload = self._predictions(name, "model_info", bpb.ModelInfoRequest().SerializeToString(),
                                    self.settings.torchserve_timeout)
        description = bpb.ModelDescription.FromString(payload)
        model = described_model(description)
        if model.name != name:
            raise BackendUnavailable(f"TorchServe's model {name!r} serves layermask model {model.name!r}")
        if description.weights_digest:
            self.digests[name] = description.weights_digest
        return model

    def load(self) -> None:
        """Describe every configured model; while TorchServe is not answering, retry every second."""
        while not self._closed:
            start = time.perf_counter()
            try:
                for name in self.settings.models:
                    if name not in self.models:
                        self.models[name] = self._describe(name)
                        self.metrics.model_load.labels(name, "torchserve", "torchserve").set(
                            time.perf_counter() - start)
                self.loaded.set()
                return
            except BackendUnavailable as error:
                self.waiting_for = f"waiting for TorchServe: {error}"
                log.warning("%s", self.waiting_for)
                time.sleep(1.0)

    def available(self) -> bool:
        """Whether the models are described and at least one TorchServe address pings healthy."""
        return self.loaded.is_set() and self.endpoints.healthy(PING_TIMEOUT_SECONDS)

    def scorer(self, model: LoadedModel) -> Scorer:
        """A scorer for one explanation or prediction, each batch one ``Predictions`` call to the next address.

        With ``torchserve_send_context_once`` the image and segments go with the first batch that an
        address gets, with their digest; later batches to that address carry the digest alone, and
        are repeated in full (to the same address) if its handler no longer holds it.
        """
        sent: dict[str, Context] = {}  # address -> the image, segments and digest its handler was sent

        def send(endpoint: Endpoint, request: bpb.MaskedBatchRequest) -> bpb.MaskedBatchResponse:
            payload = request.SerializeToString()
            self.metrics.backend_bytes.labels(model.name).inc(len(payload))
            return bpb.MaskedBatchResponse.FromString(self._predict_at(
                endpoint, model.name, "masked_batch", payload, self.settings.torchserve_timeout))

        def score_at(endpoint: Endpoint, job: ScoringJob) -> bpb.MaskedBatchResponse:
            held = sent.get(endpoint.address)
            response: bpb.MaskedBatchResponse | None = None
            if held is not None and held[0] is job.image and held[1] is job.segments:
                response = send(endpoint, digest_only_request(job, held[2]))
            if response is None or (response.HasField("error") and response.error.status == UNKNOWN_DIGEST_STATUS):
                request = masked_batch_request(job)
                if self.settings.torchserve_send_context_once and job.rows is not None:
                    with_context_digest(request)
                response = send(endpoint, request)
                if request.context_digest and not response.HasField("error"):
                    sent[endpoint.address] = (job.image, job.segments, request.context_digest)
            return response

        def score(job: ScoringJob) -> np.ndarray:
            return self._probabilities(model, job, self._through_any(model.name, lambda e: score_at(e, job)))

        return score

    def _probabilities(self, model: LoadedModel, job: ScoringJob, response: bpb.MaskedBatchResponse) -> np.ndarray:
        if response.HasField("error"):
            message = f"TorchServe's handler refused the batch ({response.error.status}): {response.error.message}"
            raise BackendFailed(message)  # this service built the batch: neither a 400 nor a 500 is the caller's
        columns = model.num_classes if job.labels is None else len(job.labels)
        try:
            return probabilities_from(response, job.num_rows, columns)
        except ValueError as error:
            raise BackendUnavailable(f"TorchServe at {self.target} answered wrongly: {error}") from None

    def close(self) -> None:
        self._closed = True
        self.endpoints.close()
