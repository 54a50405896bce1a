"""``torchserve_target``'s addresses: parsed, resolved and picked round-robin, with failover.

The peers are real gRPC servers on loopback that answer TorchServe's inference API (Ping and
Predictions) the simplest way; no TorchServe is started here (see tests/torchserve/test_torchserve_spread.py).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from layermask_service.proto import inference_pb2 as ts
from layermask_service.proto import inference_pb2_grpc as ts_grpc
from layermask_service.settings import Settings, load_settings
from layermask_service.torchserve.endpoints import (
    Endpoint,
    Endpoints,
    TargetEntry,
    Unreachable,
    parse_target,
    resolve_name,
)
from layermask_service.torchserve.process import free_port
from tests.helpers.service import wait_for


class Peer(ts_grpc.InferenceAPIsServiceServicer):
    """A gRPC server on 127.0.0.1 answering Ping with ``health`` and Predictions with its own address."""

    def __init__(self, health: str = "Healthy", port: int = 0) -> None:
        self.health, self.predictions = health, 0
        self.server = grpc.server(ThreadPoolExecutor(2))
        ts_grpc.add_InferenceAPIsServiceServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port(f'127.0.0.1:{port}')}"
        self.server.start()

    def Ping(self, request: Any, context: grpc.ServicerContext) -> ts.TorchServeHealthResponse:
        return ts.TorchServeHealthResponse(health=json.dumps({"status": self.health}))

    def Predictions(self, request: ts.PredictionsRequest, context: grpc.ServicerContext) -> ts.PredictionResponse:
        if request.model_name == "refuse":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused")
        self.predictions += 1
        return ts.PredictionResponse(prediction=self.address.encode())

    def stop(self) -> None:
        self.server.stop(None).wait(10)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    started = [Peer(), Peer()]
    try:
        yield started
    finally:
        for peer in started:
            peer.stop()


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


class Recorder:
    """An ``attempt`` for :meth:`Endpoints.call`: one Predictions call; remembers the addresses tried."""

    def __init__(self, model: str = "m") -> None:
        self.model, self.tried = model, list[str]()

    def __call__(self, endpoint: Endpoint) -> str:
        self.tried.append(endpoint.address)
        request = ts.PredictionsRequest(model_name=self.model)
        return bytes(endpoint.stub.Predictions(request, timeout=10).prediction).decode()


@pytest.mark.parametrize(("target", "entries"), [
    ("localhost:7070", [TargetEntry("localhost", 7070)]),
    (" a:1, b.example:2 ", [TargetEntry("a", 1), TargetEntry("b.example", 2)]),
    ("dns:///layermask-torchserve:7070", [TargetEntry("layermask-torchserve", 7070, resolve=True)]),
    ("[::1]:7070,dns:///x:1", [TargetEntry("::1", 7070), TargetEntry("x", 1, resolve=True)]),
])
def test_targets_parse(target: str, entries: list[TargetEntry]) -> None:
    assert list(parse_target(target)) == entries
    assert Settings(torchserve_target=target).torchserve_target == target


@pytest.mark.parametrize(("target", "complaint"), [
    ("", "names no address"), (" , ", "names no address"), ("a:1,,b:2", "empty entry"), ("a:1,", "empty entry"),
    ("a", "is not host:port"), (":7070", "is not host:port"), ("a:0", "port must be 1-65535"),
    ("a:65536", "port must be 1-65535"), ("a:http", "port must be 1-65535"), ("::1:7070", "IPv6 address in brackets"),
    ("dns://8.8.8.8/a:1", "dns:///name:port"), ("dns:a:1", "dns:///name:port"), ("dns:///a", "is not host:port"),
])
def test_malformed_targets_are_refused_naming_the_setting(target: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=f"torchserve_target: .*{complaint}"):
        Settings(torchserve_target=target)
    with pytest.raises(ValueError, match="invalid settings: torchserve_target"):
        load_settings(environ={"LAYERMASK_TORCHSERVE_TARGET": target})


def test_dns_names_are_resolved_by_the_service(peers: list[Peer]) -> None:
    port = int(peers[0].address.rsplit(":", 1)[1])
    endpoints = Endpoints(f"dns:///localhost:{port}")
    try:
        assert f"127.0.0.1:{port}" in endpoints.addresses()
        assert endpoints.addresses() == resolve_name("localhost", port)
        assert endpoints.healthy(5)
        assert endpoints.call(Recorder()) == peers[0].address
    finally:
        endpoints.close()


def test_calls_go_round_robin_over_the_addresses(peers: list[Peer]) -> None:
    endpoints = Endpoints(",".join(peer.address for peer in peers))
    try:
        answers = [endpoints.call(Recorder()) for _ in range(10)]
        assert [peer.predictions for peer in peers] == [5, 5]
        assert all(a != b for a, b in itertools.pairwise(answers))  # alternating
    finally:
        endpoints.close()


def test_an_unavailable_address_is_passed_over_and_the_call_retried(peers: list[Peer]) -> None:
    dead = dead_address()
    endpoints = Endpoints(",".join([dead, *(peer.address for peer in peers)]))
    recorder = Recorder()
    try:
        answers = [endpoints.call(recorder) for _ in range(9)]
        assert set(answers) == {peer.address for peer in peers}  # every call succeeded on a live peer
        assert recorder.tried.count(dead) == 1  # then marked down: tried after the others only
        assert sum(peer.predictions for peer in peers) == 9
        assert endpoints.healthy(5)
    finally:
        endpoints.close()


def test_each_address_is_tried_once_then_the_call_fails_naming_them() -> None:
    addresses = [dead_address(), dead_address()]
    endpoints = Endpoints(",".join(addresses))
    recorder = Recorder()
    try:
        with pytest.raises(Unreachable) as raised:
            endpoints.call(recorder)
        assert sorted(recorder.tried) == sorted(addresses)
        assert all(f"{address}: UNAVAILABLE" in str(raised.value) for address in addresses)
        assert not endpoints.healthy(2)
    finally:
        endpoints.close()


def test_errors_other_than_unavailable_are_not_retried(peers: list[Peer]) -> None:
    endpoints = Endpoints(",".join(peer.address for peer in peers))
    recorder = Recorder("refuse")
    try:
        with pytest.raises(grpc.RpcError) as raised:
            endpoints.call(recorder)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(recorder.tried) == 1
    finally:
        endpoints.close()


def test_health_is_that_of_the_healthiest_address(peers: list[Peer]) -> None:
    peers[1].health = "Unhealthy"
    endpoints = Endpoints(",".join([dead_address(), *(peer.address for peer in peers)]))
    try:
        assert endpoints.healthy(5)
        peers[0].stop()
        assert not endpoints.healthy(5)
        peers[1].health = "Healthy"
        assert endpoints.healthy(5)
    finally:
        endpoints.close()


def test_a_single_address_is_tried_again_after_it_failed() -> None:
    """The single-address service recovers when its TorchServe is back (down-marking only reorders)."""
    address = dead_address()
    endpoints = Endpoints(address)
    peer = None
    try:
        with pytest.raises(Unreachable, match=address):
            endpoints.call(Recorder())
        peer = Peer(port=int(address.rsplit(":", 1)[1]))

        def answers() -> bool:
            try:
                return endpoints.call(Recorder()) == address
            except Unreachable:
                return False  # gRPC's reconnect backoff

        wait_for(answers, 60, "the call to succeed once a server listens", interval=0.2)
    finally:
        endpoints.close()
        if peer is not None:
            peer.stop()


def test_names_are_resolved_again_periodically_and_after_a_failure(peers: list[Peer]) -> None:
    """Pods scaled up are picked up and pods removed dropped. The name's answers come from a function here
    (a test cannot change DNS); the addresses are real servers."""
    answers = {"pods": [peers[0].address]}
    lookups: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        if answers["pods"] is None:
            raise OSError("name does not resolve")
        return list(answers["pods"])

    hourly = Endpoints("dns:///pods:7070", resolve=resolve, resolve_seconds=3600)
    always = Endpoints("dns:///pods:7070", resolve=resolve, resolve_seconds=0)
    try:
        assert hourly.call(Recorder()) == peers[0].address and lookups == [("pods", 7070)]
        answers["pods"] = [peers[0].address, peers[1].address]  # scaled up: seen at the next resolution
        assert [hourly.call(Recorder()) for _ in range(4)] == [peers[0].address] * 4 and len(lookups) == 1
        assert {always.call(Recorder()) for _ in range(4)} == {peer.address for peer in peers}

        first = next(e for e in always._current if e.address == peers[0].address)
        answers["pods"] = [peers[1].address]  # scaled down: the address is dropped and its channel closed
        assert {always.call(Recorder()) for _ in range(4)} == {peers[1].address}
        assert first.retired and always.addresses() == [peers[1].address]
        answers["pods"] = None  # a failed resolution keeps the last answer
        assert always.call(Recorder()) == peers[1].address

        answers["pods"] = [dead_address()]
        hourly.close()
        hourly = Endpoints("dns:///pods:7070", resolve=resolve, resolve_seconds=3600)
        assert hourly.addresses() == answers["pods"]
        answers["pods"] = [peers[0].address]  # the pod was replaced: the failed call resolves the name again
        assert hourly.call(Recorder()) == peers[0].address
    finally:
        hourly.close()
        always.close()
