"""Health checks for containers and probes: ``python -m layermask_service.healthcheck``.

Docker's ``HEALTHCHECK`` and Kubernetes exec probes run this every few seconds, so it imports
only grpcio and the standard library (no torch: it answers in well under a second).

- By default it asks the gRPC health service (``grpc.health.v1``) of a layermask server at
  ``--target`` (default ``localhost`` and ``$LAYERMASK_PORT`` or 50051) and succeeds when the
  server is SERVING, which it reports once its models are loaded.
- ``--torchserve-ping URL`` asks TorchServe's REST ``/ping`` instead, which has no gRPC health
  service, and succeeds when it answers ``Healthy``.

Exit status 0 when healthy, 1 otherwise, with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def grpc_serving(target: str, timeout: float) -> str | None:
    """``None`` when the server at ``target`` reports SERVING, else why not."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            return f"{target}: {error.code().name}: {error.details()}"
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}"
    return None


def torchserve_healthy(url: str, timeout: float) -> str | None:
    """``None`` when TorchServe's ``/ping`` at ``url`` answers ``{"status": "Healthy"}``, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = json.loads(response.read()).get("status")
    except urllib.error.HTTPError as error:  # TorchServe answers 500 while unhealthy
        return f"{url}: HTTP {error.code}"
    except (OSError, ValueError, AttributeError) as error:
        return f"{url}: {error}"
    return None if status == "Healthy" else f"{url}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layermask_service.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=f"localhost:{os.environ.get('LAYERMASK_PORT', '50051')}",
                        help="HOST:PORT of a layermask server (default: localhost:$LAYERMASK_PORT or 50051)")
    parser.add_argument("--torchserve-ping", metavar="URL", help="check TorchServe's REST ping URL instead")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    problem = (torchserve_healthy(args.torchserve_ping, args.timeout) if args.torchserve_ping
               else grpc_serving(args.target, args.timeout))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
