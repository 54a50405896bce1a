"""The TorchServe addresses behind ``torchserve_target``: parsed, resolved, and picked one call at a time.

A Kubernetes Service balances connections, not gRPC calls, and one gRPC channel keeps one
connection: every masked batch would go to the same TorchServe pod. So the service balances
itself: one channel per address, and a round-robin pick per call. The pick is made here rather
than by gRPC's ``round_robin`` policy because a batch that names its image by digest may have to
be repeated in full on the *same* address (the scorer remembers per address what it was sent);
gRPC's policy would send the repeat elsewhere, and with two pods neither might ever learn it.

``torchserve_target`` is a comma-separated list of ``host:port`` (``[v6]:port``), each given to
gRPC as it is, and ``dns:///name:port``, resolved here with :func:`socket.getaddrinfo` (so the
pod's DNS search domains apply) every :data:`RESOLVE_SECONDS` and after a failure, so that pods
scaled up are picked up and pods removed are dropped.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from layermask_service.proto import inference_pb2_grpc as ts_grpc
from layermask_service.torchserve.process import is_healthy

log = logging.getLogger("layermask.torchserve")
RESOLVE_SECONDS = 15.0  # how often dns:/// names are resolved again
DOWN_SECONDS = 10.0     # how long an address that failed is tried only after the others
DNS = "dns:///"
T = TypeVar("T")


@dataclass(frozen=True)
class TargetEntry:
    """One address of ``torchserve_target``; ``resolve`` for ``dns:///`` names, resolved by the service."""

    host: str
    port: int
    resolve: bool = False

    @property
    def address(self) -> str:
        return join_address(self.host, self.port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _entry(text: str, target: str) -> TargetEntry:
    resolve = text.startswith(DNS)
    if text.startswith("dns:") and not resolve:
        raise ValueError(f"torchserve_target: {text!r}: write names to resolve as dns:///name:port "
                         "(the system resolver is used; no DNS server can be named)")
    rest = text[len(DNS):] if resolve else text
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
        if ":" in host:
            raise ValueError(f"torchserve_target: {text!r}: write an IPv6 address in brackets, [addr]:port")
    if not host or any(c.isspace() or c in "/[]" for c in host):
        raise ValueError(f"torchserve_target: {text!r} is not host:port or dns:///name:port (in {target!r})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"torchserve_target: {text!r}: the port must be 1-65535, got {port!r}")
    return TargetEntry(host, int(port), resolve)


def parse_target(target: str) -> tuple[TargetEntry, ...]:
    """The entries of ``target``; ``ValueError`` naming the setting if one is malformed or none is given."""
    texts = [text.strip() for text in target.split(",")]
    if not any(texts):
        raise ValueError(f"torchserve_target: names no address: {target!r}")
    if not all(texts):
        raise ValueError(f"torchserve_target: has an empty entry: {target!r}")
    return tuple(_entry(text, target) for text in texts)


def resolve_name(host: str, port: int) -> list[str]:
    """The TCP addresses of ``host`` (sorted, so that the round-robin order does not follow DNS rotation)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({join_address(str(info[4][0]), port) for info in found})


class Unreachable(ConnectionError):
    """No address of the target could take the call (each failed UNAVAILABLE, or none resolved)."""


@dataclass(eq=False)
class Endpoint:
    """One TorchServe address and its own channel."""

    address: str
    channel: grpc.Channel
    stub: ts_grpc.InferenceAPIsServiceStub
    down_until: float = 0.0
    retired: bool = False  # no longer resolved: its channel is closed, calls in flight on it fail


class Endpoints:
    """The addresses of ``target``, a channel each, picked round-robin; thread-safe."""

    def __init__(self, target: str, options: Sequence[tuple[str, Any]] = (), *,
                 resolve: Callable[[str, int], list[str]] = resolve_name,
                 resolve_seconds: float = RESOLVE_SECONDS) -> None:
        self.target = target
        self._entries = parse_target(target)
        self._dynamic = any(entry.resolve for entry in self._entries)
        self._options = list(options)
        self._resolve, self._resolve_seconds = resolve, resolve_seconds
        self._lock = threading.Lock()
        self._resolving = threading.Lock()
        self._closed = False
        self._current: list[Endpoint] = []
        self._resolved: dict[TargetEntry, list[str]] = {}  # the last good answer per dns:/// name
        self._resolve_error = ""
        self._next_resolve = 0.0  # due now
        self._turns = itertools.count()

    def addresses(self) -> list[str]:
        self._refresh_if_due()
        with self._lock:
            return [endpoint.address for endpoint in self._current]

    def _refresh_if_due(self) -> None:
        """Resolve the ``dns:///`` names if due (the first time, every :data:`RESOLVE_SECONDS`, after a failure)."""
        # One resolution at a time; while there are addresses to call, the others do not wait for it.
        if not self._resolving.acquire(blocking=not self._current):
            return
        try:
            with self._lock:
                if time.monotonic() < self._next_resolve:
                    return
                self._next_resolve = time.monotonic() + self._resolve_seconds if self._dynamic else float("inf")
            addresses, errors = [], []
            for entry in self._entries:
                if not entry.resolve:
                    addresses.append(entry.address)
                    continue
                try:
                    self._resolved[entry] = self._resolve(entry.host, entry.port)
                except OSError as error:  # keep the last answer: a DNS hiccup should not drop every pod
                    errors.append(f"{DNS}{entry.address}: {error}")
                addresses += self._resolved.get(entry, [])
            self._apply(list(dict.fromkeys(addresses)), "; ".join(errors))
        finally:
            self._resolving.release()

    def _apply(self, addresses: list[str], resolve_error: str) -> None:
        with self._lock:
            self._resolve_error = resolve_error
            if self._closed:
                return
            if not addresses:
                self._next_resolve = 0.0  # nothing to call: resolve again at the next call
            kept = {endpoint.address: endpoint for endpoint in self._current}
            if list(kept) != addresses:
                log.info("TorchServe at %s: addresses %s", self.target, ", ".join(addresses) or "none")
            for address in set(kept) - set(addresses):
                kept[address].retired = True
                kept[address].channel.close()
            self._current = [kept.get(address) or self._open(address) for address in addresses]

    def _open(self, address: str) -> Endpoint:
        channel = grpc.insecure_channel(address, options=self._options)
        return Endpoint(address, channel, ts_grpc.InferenceAPIsServiceStub(channel))

    def mark_down(self, endpoint: Endpoint) -> None:
        """Try ``endpoint`` after the others for :data:`DOWN_SECONDS`, and resolve the names again now."""
        with self._lock:
            endpoint.down_until = time.monotonic() + DOWN_SECONDS
            self._next_resolve = 0.0

    def _pick(self, turn: int, tried: set[str]) -> Endpoint | None:
        """The address after ``turn`` in round-robin order that is not ``tried``; one marked down last."""
        with self._lock:
            count, now = len(self._current), time.monotonic()
            order = [self._current[(turn + i) % count] for i in range(count)]
            left = [endpoint for endpoint in order if endpoint.address not in tried]
            up = [endpoint for endpoint in left if endpoint.down_until <= now]
            return (up or left)[0] if left else None

    def call(self, attempt: Callable[[Endpoint], T]) -> T:
        """``attempt`` on the next address; if it fails UNAVAILABLE (the pod is gone), on the next one, and so
        on, each address at most once. Other errors are the caller's; :class:`Unreachable` if none answered."""
        self._refresh_if_due()
        turn, tried, failures = next(self._turns), set[str](), list[str]()
        while (endpoint := self._pick(turn, tried)) is not None:
            tried.add(endpoint.address)
            try:
                return attempt(endpoint)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE and not endpoint.retired:
                    raise
                failures.append(f"{endpoint.address}: {error.code().name}: {error.details()}")
            except ValueError:  # gRPC refuses calls on a closed channel: the address was just dropped
                if not endpoint.retired:
                    raise
                failures.append(f"{endpoint.address}: no longer resolved")
            self.mark_down(endpoint)
            self._refresh_if_due()
        if failures:
            raise Unreachable("; ".join(failures))
        with self._lock:
            reason = self._resolve_error or "no address"
        raise Unreachable(f"{self.target} resolves to no address ({reason})")

    def healthy(self, timeout: float) -> bool:
        """Ping every address at once; whether one is healthy. Those that are not are marked down."""
        self._refresh_if_due()
        with self._lock:
            current = list(self._current)
        pings = []
        for endpoint in current:
            try:
                pings.append((endpoint, endpoint.stub.Ping.future(empty_pb2.Empty(), timeout=timeout)))
            except ValueError:  # dropped meanwhile
                continue
        any_healthy = False
        for endpoint, ping in pings:
            try:
                healthy = is_healthy(ping.result().health)
            except grpc.RpcError:
                healthy = False
            any_healthy |= healthy
            if healthy:
                endpoint.down_until = 0.0
            else:
                self.mark_down(endpoint)
        return any_healthy

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for endpoint in self._current:
                endpoint.retired = True
                endpoint.channel.close()
            self._current = []
            self._next_resolve = float("inf")
