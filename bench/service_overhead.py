"""The same 1,000-sample explanation through the gRPC service and in-process, interleaved.

The server (embedded backend, EfficientNet-Lite0) runs in this process on loopback, with the
same allocator setting as ``layermask serve`` (one malloc arena); each
repetition times one ``Explain`` call and one ``layermask.explain`` call with the same request and
seed, so both share the machine's state. Prints the medians and their ratio.

    .venv/bin/python bench/service_overhead.py [--repeats 5] [--samples 1000]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import _unshadow  # noqa: F401  (before anything imports onnx: bench/onnx.py would shadow it)
import torch
from PIL import Image
from skimage import data

import layermask
from layermask.allocator import keep_freed_memory
from layermask.models.images import decode_image
from layermask_service.client import ExplainClient, explain_request
from layermask_service.server import BackgroundServer
from layermask_service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as `layermask serve` does, so both paths allocate alike

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="PNG")
    image = buffer.getvalue()
    server = BackgroundServer(Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0))
    model = server.server.backend.model(layermask.DEFAULT_MODEL)
    request = explain_request(image, num_samples=args.samples, seed=0)
    timings: dict[str, list[float]] = {"grpc": [], "in-process": []}
    try:
        with ExplainClient(server.target, timeout=600) as client:
            client.explain(explain_request(image, num_samples=16))  # warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                response = client.explain(request)
                timings["grpc"].append(time.perf_counter() - start)
                start = time.perf_counter()
                local = layermask.explain(model, decode_image(image), num_samples=args.samples, seed=0)
                timings["in-process"].append(time.perf_counter() - start)
                assert list(response.explanations[0].weights) == local.explanations[local.labels[0]].weights.tolist()
    finally:
        server.stop()
    grpc_s, local_s = statistics.median(timings["grpc"]), statistics.median(timings["in-process"])
    print(f"{args.samples} samples, quickshift, layer masking, EfficientNet-Lite0, median of {args.repeats}")
    print("| path | time (s) |\n|---|---|")
    print(f"| gRPC Explain (loopback) | {grpc_s:.2f} |\n| in-process layermask.explain | {local_s:.2f} |")
    print(f"\nratio gRPC / in-process: {grpc_s / local_s:.3f}")
    print("all runs:", {k: [round(v, 2) for v in vs] for k, vs in timings.items()})


if __name__ == "__main__":
    main()
