"""The same 1,000-sample explanation through the TorchServe backend and the embedded backend, interleaved.

Three services run in this process on loopback: one with the embedded backend, and two with the
TorchServe backend wired to one local TorchServe (started here from a freshly built archive, on
free ports, with the archive's default batching): ``torchserve`` sends each explanation's image and
segments once and then their digest (the default), ``torchserve-full`` sends them with every batch
(``torchserve_send_context_once = false``, as before the digest cache). Each repetition times one
``Explain`` call on each, same request and seed, so all share the machine's state; the weights
must agree within 1e-5. Prints the medians, the time ratios and the request bytes per explanation
sent to TorchServe (``layermask_backend_request_bytes_total``).

    .venv/bin/python bench/backends.py [--repeats 3] [--samples 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import tempfile
import time

import _unshadow  # noqa: F401  (before anything imports onnx: bench/onnx.py would shadow it)
import numpy as np
import torch
from PIL import Image
from skimage import data

from layermask.allocator import keep_freed_memory
from layermask_service.client import ExplainClient, explain_request
from layermask_service.server import BackgroundServer
from layermask_service.settings import Settings
from layermask_service.torchserve.archive import ArchiveSettings, build_archive
from layermask_service.torchserve.process import TorchServeProcess

MODEL = "efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as `layermask serve` does

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="PNG")
    request = explain_request(buffer.getvalue(), num_samples=args.samples, seed=0)
    warm_up = explain_request(buffer.getvalue(), num_samples=16)
    loopback = Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0)
    timings: dict[str, list[float]] = {"embedded": [], "torchserve": [], "torchserve-full": []}
    sent: dict[str, list[float]] = {"torchserve": [], "torchserve-full": []}
    with tempfile.TemporaryDirectory() as store:
        settings = ArchiveSettings()
        build_archive(MODEL, store, settings=settings)
        with TorchServeProcess(store, [MODEL], free_ports=True) as torchserve:
            remote = dataclasses.replace(loopback, backend="torchserve", torchserve_target=torchserve.grpc_target)
            servers = {"embedded": BackgroundServer(loopback), "torchserve": BackgroundServer(remote),
                       "torchserve-full": BackgroundServer(dataclasses.replace(remote,
                                                                               torchserve_send_context_once=False))}
            try:
                clients = {name: ExplainClient(server.target, timeout=900) for name, server in servers.items()}
                for client in clients.values():
                    client.explain(warm_up)
                for _ in range(args.repeats):
                    weights = {}
                    for name, client in clients.items():
                        before = _request_bytes(servers[name])
                        start = time.perf_counter()
                        response = client.explain(request)
                        timings[name].append(time.perf_counter() - start)
                        if name in sent:
                            sent[name].append(_request_bytes(servers[name]) - before)
                        weights[name] = np.array(response.explanations[0].weights)
                    for name in sent:
                        assert np.abs(weights["embedded"] - weights[name]).max() <= 1e-5
                for client in clients.values():
                    client.close()
            finally:
                for server in servers.values():
                    server.stop()
    median = {name: statistics.median(values) for name, values in timings.items()}
    print(f"{args.samples} samples, quickshift, layer masking, {MODEL}, median of {args.repeats}; TorchServe "
          f"batchSize {settings.batch_size}, maxBatchDelay {settings.max_batch_delay_ms} ms, 1 worker")
    print("| backend | time (s) | / embedded | request bytes to TorchServe per explanation |\n|---|---|---|---|")
    for name, seconds in median.items():
        sent_bytes = f"{statistics.median(sent[name]):,.0f}" if name in sent else "–"
        print(f"| {name} | {seconds:.2f} | {seconds / median['embedded']:.3f} | {sent_bytes} |")
    print("all runs:", {k: [round(v, 2) for v in vs] for k, vs in timings.items()})


def _request_bytes(server: BackgroundServer) -> float:
    value = server.server.metrics.registry.get_sample_value("layermask_backend_request_bytes_total", {"model": MODEL})
    return value or 0.0

if __name__ == "__main__":
    main()
