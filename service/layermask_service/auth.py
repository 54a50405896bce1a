"""Bearer-token authentication of gRPC calls: the server's interceptor and the client's.

The token file holds one accepted token a line; blank lines and ``#`` comments are skipped, so an
operator rotates by adding the new token, moving clients over, then deleting the old one. The
server re-reads the file when it changes (looked at, at most every :data:`CHECK_INTERVAL` s, on
calls) and on SIGHUP (:meth:`TokenStore.reload`); a failed reload keeps the previous tokens.

Tokens never reach logs or metrics: the store keeps only their SHA-256 digests, and messages about
the file name line numbers, never contents. Comparing digests with :func:`hmac.compare_digest`
against *every* accepted token takes the same time whichever token (if any) matches, and equal-length
digests hide the tokens' lengths.

The health and reflection services are exempt (:data:`EXEMPT_PREFIXES`): Kubernetes' probes and
``grpcurl list`` carry no token, and neither service reveals more than the names of the services.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from layermask_service.tls import fingerprint

CHECK_INTERVAL = 1.0  # seconds between looks at the token file, at most
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                   "/grpc.reflection.v1.ServerReflection/")
MISSING = "a bearer token is required: send metadata 'authorization: Bearer <token>'"
INVALID = "invalid bearer token"
log = logging.getLogger("layermask.auth")


def parse_tokens(text: str, source: str = "auth_token_file") -> list[str]:
    """The tokens of a token file's text; ``ValueError`` (naming ``source`` and a line, never a token)
    when there are none or one cannot travel in gRPC metadata (printable ASCII, no spaces)."""
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not all(33 <= ord(c) <= 126 for c in line):
            raise ValueError(f"{source}: line {number}: a token must be printable ASCII without spaces")
        tokens.append(line)
    if not tokens:
        raise ValueError(f"{source}: no token in the file (one token a line; blank lines and # comments skipped)")
    return tokens


def read_tokens(path: str | Path, source: str = "auth_token_file") -> list[str]:
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as error:
        raise ValueError(f"{source}: cannot read {path}: {error.strerror}") from None
    return parse_tokens(text, source)


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class TokenStore:
    """The accepted tokens (as digests), following the file they come from."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._digests = tuple(_digest(t) for t in read_tokens(self.path))  # at start, a bad file is fatal
        self._seen = fingerprint(self.path)
        self._checked = time.monotonic()
        log.info("accepting %d bearer token(s) from %s", len(self._digests), self.path)

    def __len__(self) -> int:
        return len(self._digests)

    def reload(self) -> bool:
        """Re-read the file now; on failure keep the previous tokens, log a warning and return False."""
        with self._lock:
            self._seen, self._checked = fingerprint(self.path), time.monotonic()
            try:
                digests = tuple(_digest(t) for t in read_tokens(self.path))
            except ValueError as error:
                log.warning("keeping the previous %d bearer token(s): %s", len(self._digests), error)
                return False
            self._digests = digests
        log.info("reloaded %s: accepting %d bearer token(s)", self.path, len(digests))
        return True

    def _follow(self) -> None:
        """Reload if the file changed, looking at most every CHECK_INTERVAL seconds (a stat, no read)."""
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        if fingerprint(self.path) != self._seen:
            self.reload()

    def accepts(self, token: str | bytes) -> bool:
        self._follow()
        presented = _digest(token)
        matched = False
        for accepted in self._digests:  # all of them, whichever matches: constant time
            matched |= hmac.compare_digest(presented, accepted)
        return matched


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of the first ``authorization: Bearer <token>`` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return token.strip()
    return None


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED. Requests stay undecoded
    bytes: an unauthenticated caller's message is never parsed."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    kind = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return kind(refuse, request_deserializer=None, response_serializer=handler.response_serializer)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call, but to exempt services, that lacks a token of ``store``.

    ``on_refused(rpc)`` is called for each refused call (the metrics count it: the servicer never sees it).
    """

    def __init__(self, store: TokenStore, on_refused: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.on_refused = on_refused

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is not None and self.store.accepts(token):
            return handler
        rpc = method.rsplit("/", 1)[-1]
        log.debug("refused %s: %s", rpc, "no bearer token" if token is None else "invalid bearer token")
        if self.on_refused is not None:
            self.on_refused(rpc)
        return _refusal(handler, MISSING if token is None else INVALID)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


class BearerTokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel.

    Metadata rather than :func:`grpc.metadata_call_credentials`: gRPC refuses call credentials on
    plaintext channels, and a token over plaintext is still right on loopback or inside a mesh that
    encrypts pod-to-pod traffic.
    """

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        fields: dict[str, Any] = {name: getattr(details, name, None) for name in _CallDetails.__dataclass_fields__}
        return replace(_CallDetails(**fields), metadata=[*(fields["metadata"] or ()), self._entry])

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails,
                               request_iterator: Iterator[Any]) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails,
                                request_iterator: Iterator[Any]) -> Any:
        return continuation(self._details(client_call_details), request_iterator)
