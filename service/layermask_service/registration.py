"""Registering the ExplainService on a gRPC server so that undecodable request bytes reach the servicer.

gRPC calls a method's deserializer before the servicer, and answers an exception raised there with
``UNKNOWN`` and a logged traceback. The deserializers here return :class:`Undecodable` instead, which
the servicer refuses with ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from layermask_service.proto import explain_pb2 as pb

if TYPE_CHECKING:
    from layermask_service.servicer import ExplainServicer


class Undecodable:
    """What :func:`add_to_server`'s deserializers give the servicer for request bytes that do not parse."""

    def __init__(self, message_type: str, error: DecodeError) -> None:
        self.message_type = message_type
        self.error = error

    def __str__(self) -> str:
        return f"request: not a valid {self.message_type} ({self.error})"


def _tolerant(message_class: Any) -> Callable[[bytes], Any]:
    """``message_class.FromString``, returning :class:`Undecodable` instead of raising.

    (See the module's docstring.)
    """
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return Undecodable(name, error)

    return deserialize


def add_to_server(servicer: ExplainServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like ``add_ExplainServiceServicer_to_server``, but with deserializers that let
    it refuse undecodable request bytes with ``INVALID_ARGUMENT``."""
    rpc = grpc.unary_unary_rpc_method_handler
    handlers = {
        "Explain": rpc(servicer.Explain, request_deserializer=_tolerant(pb.ExplainRequest),
                       response_serializer=pb.ExplainResponse.SerializeToString),
        "ExplainStream": grpc.unary_stream_rpc_method_handler(
            servicer.ExplainStream, request_deserializer=_tolerant(pb.ExplainRequest),
            response_serializer=pb.ExplainEvent.SerializeToString),
        "Predict": rpc(servicer.Predict, request_deserializer=_tolerant(pb.PredictRequest),
                       response_serializer=pb.PredictResponse.SerializeToString),
        "ListModels": rpc(servicer.ListModels, request_deserializer=_tolerant(pb.ListModelsRequest),
                          response_serializer=pb.ListModelsResponse.SerializeToString),
    }
    service = pb.DESCRIPTOR.services_by_name["ExplainService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
