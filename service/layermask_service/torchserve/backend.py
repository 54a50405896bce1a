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

import grpc
import numpy as np
from google.protobuf import empty_pb2

from layermask.explanation.scoring import Scorer, ScoringJob
from layermask.models.registry import LoadedModel
from layermask_service.backend import Backend
from layermask_service.errors import BackendFailed, BackendUnavailable
from layermask_service.metrics import Metrics
from layermask_service.proto import backend_pb2 as bpb
from layermask_service.proto import inference_pb2 as ts
from layermask_service.proto import inference_pb2_grpc as ts_grpc
from layermask_service.settings import Settings
from layermask_service.torchserve.context_cache import UNKNOWN_DIGEST_STATUS
from layermask_service.torchserve.messages import (
    described_model,
    digest_only_request,
    masked_batch_request,
    probabilities_from,
    with_context_digest,
)
from layermask_service.torchserve.process import is_healthy

log = logging.getLogger("layermask.torchserve")
PING_TIMEOUT_SECONDS = 2.0


class TorchServeBackend(Backend):
    """Models served by TorchServe at ``settings.torchserve_target`` (its gRPC inference port)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.target = settings.torchserve_target
        limit = settings.max_message_bytes
        self._channel = grpc.insecure_channel(self.target, options=[("grpc.max_receive_message_length", limit),
                                                                    ("grpc.max_send_message_length", limit)])
        self._stub = ts_grpc.InferenceAPIsServiceStub(self._channel)
        self._closed = False

    def _predictions(self, model: str, key: str, payload: bytes, timeout: float) -> bytes:
        request = ts.PredictionsRequest(model_name=model, input={key: payload})
        try:
            return bytes(self._stub.Predictions(request, timeout=timeout).prediction)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise BackendFailed(f"TorchServe refused the request: {details}") from None
            raise BackendUnavailable(f"TorchServe at {self.target} failed for model {model!r}: "
                                     f"{code.name}: {details}") from None

    def _describe(self, name: str) -> LoadedModel:
        payload = self._predictions(name, "model_info", bpb.ModelInfoRequest().SerializeToString(),
                                    self.settings.torchserve_timeout)
        model = described_model(bpb.ModelDescription.FromString(payload))
        if model.name != name:
            raise BackendUnavailable(f"TorchServe's model {name!r} serves layermask model {model.name!r}")
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
        if not self.loaded.is_set():
            return False
        try:
            response = self._stub.Ping(empty_pb2.Empty(), timeout=PING_TIMEOUT_SECONDS)
        except grpc.RpcError:
            return False
        return is_healthy(response.health)

    def scorer(self, model: LoadedModel) -> Scorer:
        """A scorer for one explanation or prediction, each batch one ``Predictions`` call.

        With ``torchserve_send_context_once`` the image and segments go with the first batch and
        its digest; later batches of the same image and segments carry the digest alone, and are
        repeated in full if the handler no longer holds it.
        """
        sent: list[tuple[object, object, str]] = []  # (image, segments, digest) the handler was sent

        def send(request: bpb.MaskedBatchRequest) -> bpb.MaskedBatchResponse:
            payload = request.SerializeToString()
            self.metrics.backend_bytes.labels(model.name).inc(len(payload))
            return bpb.MaskedBatchResponse.FromString(
                self._predictions(model.name, "masked_batch", payload, self.settings.torchserve_timeout))

        def score(job: ScoringJob) -> np.ndarray:
            known = [digest for image, segments, digest in sent if image is job.image and segments is job.segments]
            response = send(digest_only_request(job, known[0])) if known else None
            if response is None or (response.HasField("error") and response.error.status == UNKNOWN_DIGEST_STATUS):
                request = masked_batch_request(job)
                if self.settings.torchserve_send_context_once and job.rows is not None:
                    with_context_digest(request)
                response = send(request)
                if request.context_digest and not response.HasField("error"):
                    sent[:] = [(job.image, job.segments, request.context_digest)]
            return self._probabilities(model, job, response)

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
        self._channel.close()
