"""The same 1,000-sample explanation through the TorchServe backend and the embedded backend, interleaved.

Two services run in this process on loopback: one with the embedded backend, one with the
TorchServe backend wired to a local TorchServe (started here from a freshly built archive, on free
ports, with the archive's default batching). Each repetition times one ``Explain`` call on each,
same request and seed, so both share the machine's state; the weights must agree within 1e-5.
Prints the medians and their ratio.

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
    timings: dict[str, list[float]] = {"embedded": [], "torchserve": []}
    with tempfile.TemporaryDirectory() as store:
        settings = ArchiveSettings()
        build_archive(MODEL, store, settings=settings)
        with TorchServeProcess(store, [MODEL], free_ports=True) as torchserve:
            servers = {"embedded": BackgroundServer(loopback),
                       "torchserve": BackgroundServer(dataclasses.replace(
                           loopback, backend="torchserve", torchserve_target=torchserve.grpc_target))}
            try:
                clients = {name: ExplainClient(server.target, timeout=900) for name, server in servers.items()}
                for client in clients.values():
                    client.explain(warm_up)
                for _ in range(args.repeats):
                    weights = {}
                    for name, client in clients.items():
                        start = time.perf_counter()
                        response = client.explain(request)
                        timings[name].append(time.perf_counter() - start)
                        weights[name] = np.array(response.explanations[0].weights)
                    assert np.abs(weights["embedded"] - weights["torchserve"]).max() <= 1e-5
                for client in clients.values():
                    client.close()
            finally:
                for server in servers.values():
                    server.stop()
    embedded, remote = statistics.median(timings["embedded"]), statistics.median(timings["torchserve"])
    print(f"{args.samples} samples, quickshift, layer masking, {MODEL}, median of {args.repeats}; TorchServe "
          f"batchSize {settings.batch_size}, maxBatchDelay {settings.max_batch_delay_ms} ms, 1 worker")
    print("| backend | time (s) |\n|---|---|")
    print(f"| embedded | {embedded:.2f} |\n| TorchServe | {remote:.2f} |")
    print(f"\nratio TorchServe / embedded: {remote / embedded:.3f}")
    print("all runs:", {k: [round(v, 2) for v in vs] for k, vs in timings.items()})


if __name__ == "__main__":
    main()
