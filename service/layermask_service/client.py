"""A small Python client for ``layermask.v1.ExplainService``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from layermask.explanation.options import AUTO, DEFAULT_METHOD
from layermask.explanation.segmentation import SEGMENTATIONS
from layermask.masking.names import DEFAULT_MASKING
from layermask_service import tls
from layermask_service.auth import BearerTokenClientInterceptor, read_tokens
from layermask_service.methods import METHOD_ENUMS
from layermask_service.proto import explain_pb2 as pb
from layermask_service.proto import explain_pb2_grpc as pb_grpc
from layermask_service.settings import MAX_MESSAGE_BYTES
from layermask_service.translate import MASKING_ENUMS

# The message of each core method (a method without one fails here, at import).
_SEGMENTATION_MESSAGES: dict[str, Any] = {name: getattr(pb, name.capitalize()) for name in SEGMENTATIONS}


def segmentation_message(method: str = "quickshift", params: Mapping[str, Any] | None = None) -> pb.Segmentation:
    """``("slic", {"n_segments": 50})`` → ``Segmentation(slic=Slic(n_segments=50))``."""
    if method not in _SEGMENTATION_MESSAGES:
        raise ValueError(f"unknown segmentation {method!r}; choose one of {', '.join(_SEGMENTATION_MESSAGES)}")
    kind = _SEGMENTATION_MESSAGES[method]
    fields = {f.name: f for f in kind.DESCRIPTOR.fields}
    converted = {}
    for key, value in (params or {}).items():
        if key not in fields:
            raise ValueError(f"unknown {method} parameter {key!r}; known: {', '.join(fields)}")
        converted[key] = int(value) if fields[key].type == fields[key].TYPE_INT32 else float(value)
    return pb.Segmentation(**{method: kind(**converted)})


def explain_request(image: bytes, *, model: str = "", masking: str = DEFAULT_MASKING, segmentation: str = "quickshift",
                    segmentation_params: Mapping[str, Any] | None = None, num_samples: int | str | None = None,
                    keep_probability: float | None = None, kernel_width: float | None = None,
                    seed: int | None = None, labels: Sequence[int] | None = None, top_labels: int | None = None,
                    heatmap_format: Any = pb.HEATMAP_FORMAT_NONE, method: str = DEFAULT_METHOD,
                    adaptive: Mapping[str, Any] | None = None,
                    occlusion: Mapping[str, Any] | None = None) -> pb.ExplainRequest:
    """An ``ExplainRequest`` in the Python API's terms: ``method`` by name, ``num_samples="auto"`` (sent as 0),
    and ``adaptive`` and ``occlusion`` as mappings of their messages' fields."""
    if masking not in MASKING_ENUMS:
        raise ValueError(f"unknown masking strategy {masking!r}; choose one of {', '.join(MASKING_ENUMS)}")
    if method not in METHOD_ENUMS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHOD_ENUMS)}")
    optional: dict[str, Any] = {"num_samples": 0 if num_samples == AUTO else num_samples,
                                "keep_probability": keep_probability, "kernel_width": kernel_width, "seed": seed,
                                "top_labels": top_labels,
                                "adaptive": None if adaptive is None else pb.Adaptive(**adaptive),
                                "occlusion": None if occlusion is None else pb.Occlusion(**occlusion)}
    return pb.ExplainRequest(model=model, image=image, masking=MASKING_ENUMS[masking], method=METHOD_ENUMS[method],
                             segmentation=segmentation_message(segmentation, segmentation_params),
                             labels=list(labels or []), heatmap_format=heatmap_format,
                             **{k: v for k, v in optional.items() if v is not None})


class ExplainClient:
    """Blocking client. ``timeout`` (seconds) becomes each call's gRPC deadline.

    TLS when ``tls`` or any ``tls_*`` file is given: ``tls_ca_file`` is trusted (default: the system's
    roots), ``tls_cert_file`` and ``tls_key_file`` are the client certificate of mTLS, and
    ``tls_server_name`` overrides the name checked in the server's certificate. ``token_file``: its
    first token goes as ``authorization: Bearer …`` with every call (the file is read once, here).
    """

    def __init__(self, target: str, timeout: float | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, *, tls_ca_file: str | None = None,
                 tls_cert_file: str | None = None, tls_key_file: str | None = None, token_file: str | None = None,
                 tls_server_name: str | None = None, use_tls: bool = False) -> None:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", max_message_bytes),
                                          ("grpc.max_send_message_length", max_message_bytes)]
        if use_tls or tls_ca_file or tls_cert_file or tls_key_file:
            credentials = tls.channel_credentials(tls_ca_file, tls_cert_file, tls_key_file)
            channel = grpc.secure_channel(target, credentials, options=options + tls.channel_options(tls_server_name))
        else:
            channel = grpc.insecure_channel(target, options=options)
        self.channel = channel
        if token_file is not None:
            token = read_tokens(token_file, source="token_file")[0]
            channel = grpc.intercept_channel(channel, BearerTokenClientInterceptor(token))
        self.stub = pb_grpc.ExplainServiceStub(channel)
        self.timeout = timeout

    def explain(self, request: pb.ExplainRequest) -> pb.ExplainResponse:
        return self.stub.Explain(request, timeout=self.timeout)

    def explain_stream(self, request: pb.ExplainRequest,
                       progress: Callable[[int, int], None] | None = None) -> pb.ExplainResponse:
        """Explain with progress events; returns the final result."""
        for event in self.stub.ExplainStream(request, timeout=self.timeout):
            if event.HasField("progress") and progress is not None:
                progress(event.progress.done, event.progress.total)
            elif event.HasField("result"):
                return event.result
        raise RuntimeError("the stream ended without a result")

    def predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        return self.stub.Predict(request, timeout=self.timeout)

    def list_models(self) -> pb.ListModelsResponse:
        return self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ExplainClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
