"""Assembling and running the gRPC server: servicer, health, reflection, metrics, graceful stop,
and the optional TLS, mTLS and bearer tokens of docs/security.md."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from layermask.allocator import keep_freed_memory
from layermask_service import tls
from layermask_service.auth import BearerTokenInterceptor, TokenStore
from layermask_service.backend import Backend, EmbeddedBackend
from layermask_service.metrics import Metrics
from layermask_service.proto import explain_pb2 as pb
from layermask_service.registration import add_to_server
from layermask_service.servicer import ExplainServicer
from layermask_service.settings import Settings

T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExplainService"].full_name
log = logging.getLogger("layermask.server")


class ExplainServer:
    """One server: call :meth:`start`, then :meth:`stop`. Ports 0 pick free ports (see :attr:`port`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.backend = make_backend(settings, self.metrics)
        # One long-lived thread per compute slot: each keeps its warm intra-op (OpenMP) team and
        # oneDNN state, instead of work hopping between threads. Loading gets a thread of its own.
        threads = torch.get_num_threads()
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="compute",
                                           initializer=torch.set_num_threads, initargs=(threads,))
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
        self.health = health.aio.HealthServicer()
        limit = settings.max_message_bytes
        self.tokens = None if settings.auth_token_file is None else TokenStore(settings.auth_token_file)
        interceptors = [] if self.tokens is None else [
            BearerTokenInterceptor(self.tokens, self.metrics.count_unauthenticated)]
        self.server = grpc.aio.server(interceptors=interceptors,
                                      options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.max_send_message_length", limit)])
        # Not the generated add_ExplainServiceServicer_to_server: undecodable request bytes get
        # INVALID_ARGUMENT from the servicer instead of UNKNOWN from gRPC.
        self.servicer = ExplainServicer(self.backend, settings, self.metrics, self.executor)
        add_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = 0
        self.metrics_port = 0
        self._metrics_http: Any = None
        self._loading: asyncio.Future[None] | None = None
        self._watching: asyncio.Future[None] | None = None

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen at once (health NOT_SERVING), then load the models in the background."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        s = self.settings
        address = f"{s.host}:{s.port}"
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            credentials = tls.server_credentials(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        if s.metrics_tls_cert_file is not None:
            tls.check_pem(s.metrics_tls_cert_file, str(s.metrics_tls_key_file), what="metrics_tls")
        self._metrics_http = self.metrics.serve(s.metrics_host, s.metrics_port, s.metrics_tls_cert_file,
                                                s.metrics_tls_key_file)
        self.metrics_port = self._metrics_http.server_port
        await self.server.start()
        log.info("listening on %s:%d (%s), metrics on %s:%d (%s)", s.host, self.port, self.security,
                 s.metrics_host, self.metrics_port, "https" if s.metrics_tls_cert_file else "http")
        if self.tokens is not None and s.tls_cert_file is None and s.host not in ("localhost", "127.0.0.1", "::1"):
            log.warning("bearer tokens travel in plaintext: set tls_cert_file and tls_key_file, or keep the "
                        "port behind something that encrypts (a service mesh)")
        self._loading = asyncio.ensure_future(self._load())

    @property
    def security(self) -> str:
        """How callers are checked, in words, for the log."""
        s = self.settings
        transport = ("plaintext" if s.tls_cert_file is None else
                     "TLS, client certificates required" if s.tls_client_ca_file else "TLS")
        return transport + (", bearer token required" if self.tokens is not None else "")

    def reload_tokens(self) -> bool:
        """Re-read the bearer-token file now (SIGHUP); False, and the old tokens kept, when it fails."""
        return self.tokens.reload() if self.tokens is not None else False

    async def _load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.loader, self.backend.load)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("models loaded: %s; serving", ", ".join(self.backend.models))
        self._watching = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """Follow the backend's availability (TorchServe going down and coming back) in the health status."""
        serving = True
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.health_interval)
            available = await loop.run_in_executor(self.loader, self.backend.available)
            if available != serving:
                serving = available
                log.warning("backend %s", "available again: SERVING" if available else "unavailable: NOT_SERVING")
                await self._set_health(health_pb2.HealthCheckResponse.SERVING if available
                                       else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def wait_until_serving(self) -> None:
        assert self._loading is not None, "start() first"
        await asyncio.shield(self._loading)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING for good, refuse new calls, let in-flight calls finish for up to ``grace`` s, close.

        The health watcher and any model loading stop first, and the health service enters graceful
        shutdown, so nothing can report SERVING again while in-flight calls drain.
        """
        for task in (self._watching, self._loading):
            if task is not None and not task.done():
                task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        self.backend.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)


def make_backend(settings: Settings, metrics: Metrics) -> Backend:
    if settings.backend == "torchserve":
        from layermask_service.torchserve.backend import TorchServeBackend

        return TorchServeBackend(settings, metrics)
    return EmbeddedBackend(settings, metrics)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls for ``grace_seconds`` and return.

    SIGHUP re-reads the bearer-token file (it is also followed on calls). Certificates of the gRPC port
    are followed too (:mod:`layermask_service.tls`); the metrics port's are read at start only.
    """
    keep_freed_memory()
    server = ExplainServer(settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup, server)  # before "listening": no SIGHUP kills us
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %.0f s", settings.grace_seconds)
    await server.stop()
    log.info("stopped")


def _reload_on_sighup(server: ExplainServer) -> None:
    log.info("SIGHUP: reloading the bearer-token file" if server.tokens is not None
             else "SIGHUP: no auth_token_file to reload")
    server.reload_tokens()


class BackgroundServer:
    """An :class:`ExplainServer` on an event loop in a background thread, for embedding the service
    in another program (and for tests and benchmarks). :meth:`stop` when done."""

    def __init__(self, settings: Settings, wait_until_serving: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="grpc-server")
        self.thread.start()
        self.server: ExplainServer = self.run(self._create(settings))
        if wait_until_serving:
            self.run(self.server.wait_until_serving())

    @staticmethod
    async def _create(settings: Settings) -> ExplainServer:
        server = ExplainServer(settings)
        await server.start()
        return server

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"{self.server.settings.host}:{self.server.port}"

    def stop(self, grace: float = 1.0) -> None:
        self.run(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
