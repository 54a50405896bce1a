"""Prometheus metrics of the service, in a registry of their own, served on a separate port."""

from __future__ import annotations

import platform
from typing import Any

import prometheus_client as prom
import torch

import layermask

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SAMPLES_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1000, 1500, 2000, 5000, 10000, 20000)


class Metrics:
    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.latency = prom.Histogram("layermask_explain_latency_seconds", "Latency of an RPC, end to end.",
                                      ["model", "masking", "rpc", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = prom.Histogram("layermask_stage_seconds", "Time per stage of an explanation.",
                                    ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.requests = prom.Counter("layermask_requests", "RPCs by method and status code.",
                                     ["rpc", "code"], registry=r)
        self.inflight = prom.Gauge("layermask_inflight_requests", "Explanations and predictions computing now.",
                                   registry=r)
        self.queue_depth = prom.Gauge("layermask_queue_depth", "Explanations waiting for a compute slot.",
                                      registry=r)
        self.batch_size = prom.Histogram("layermask_forward_batch_size", "Rows per masked forward pass.",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.perturbations = prom.Counter("layermask_perturbations", "Masked samples evaluated.", ["model"],
                                          registry=r)
        self.backend_bytes = prom.Counter("layermask_backend_request_bytes",
                                          "Bytes of masked-batch requests sent to a remote backend (TorchServe).",
                                          ["model"], registry=r)
        self.samples_used = prom.Histogram("layermask_samples_used",
                                           "Samples (masked rows) an explanation scored, by method and by "
                                           "sampling: fixed (num_samples) or adaptive (num_samples = 0).",
                                           ["method", "sampling"], buckets=SAMPLES_BUCKETS, registry=r)
        self.cache_hits = prom.Counter("layermask_cache_hits", "Explanations answered from the result cache.",
                                       registry=r)
        self.cache_misses = prom.Counter("layermask_cache_misses",
                                         "Cacheable explanations (seed set, cache on) not in the result cache.",
                                         registry=r)
        self.cache_bytes = prom.Gauge("layermask_cache_bytes", "Bytes the result cache holds (at most cache_mib).",
                                      registry=r)
        self.model_load = prom.Gauge("layermask_model_load_seconds", "Time taken to load each model.",
                                     ["model", "format", "provider"], registry=r)
        self.build = prom.Info("layermask_build", "Versions this server runs.", registry=r)
        self.build.info({"version": layermask.__version__, "torch": torch.__version__,
                         "python": platform.python_version()})

    def serve(self, host: str, port: int, certfile: str | None = None, keyfile: str | None = None) -> Any:
        """Start the ``/metrics`` HTTP endpoint (HTTPS with ``certfile`` and ``keyfile``); returns the HTTP
        server (``.server_port``, ``.shutdown()``). The certificate is read once, here: a restart picks up
        a renewed one."""
        server, _thread = prom.start_http_server(port, addr=host, registry=self.registry,
                                                 certfile=certfile, keyfile=keyfile)
        return server

    def count_unauthenticated(self, rpc: str) -> None:
        """A call refused for want of a valid bearer token: the servicer, which counts the others, never saw it."""
        self.requests.labels(rpc, "UNAUTHENTICATED").inc()
