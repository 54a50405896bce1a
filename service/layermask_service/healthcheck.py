"""Health checks for containers and probes: ``python -m layermask_service.healthcheck``.

Docker's ``HEALTHCHECK`` and Kubernetes exec probes run this every few seconds, so it imports
only grpcio and the standard library (no torch: it answers in well under a second).

- By default it asks the gRPC health service (``grpc.health.v1``) of a layermask server at
  ``--target`` (default ``localhost`` and ``$LAYERMASK_PORT`` or 50051) and succeeds when the
  server is SERVING, which it reports once its models are loaded.
- Against a TLS server, ``--tls-ca-file`` (and for mTLS ``--tls-cert-file``/``--tls-key-file``;
  ``--tls-server-name`` when the certificate does not name the target's host). Each defaults to
  ``$LAYERMASK_HEALTHCHECK_TLS_CA_FILE`` (…``_CERT_FILE``, ``_KEY_FILE``, ``_SERVER_NAME``), so the
  image's argument-less ``HEALTHCHECK`` works by setting the environment. No token is needed:
  the health service is exempt from bearer tokens.
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

from layermask_service import tls

TLS_FLAGS = ("ca_file", "cert_file", "key_file", "server_name")


def _channel(target: str, tls_files: dict[str, str | None]) -> grpc.Channel:
    if not any(tls_files[name] for name in ("ca_file", "cert_file", "key_file")):
        return grpc.insecure_channel(target)
    credentials = tls.channel_credentials(tls_files["ca_file"], tls_files["cert_file"], tls_files["key_file"])
    return grpc.secure_channel(target, credentials, options=tls.channel_options(tls_files["server_name"]))


def grpc_serving(target: str, timeout: float, tls_files: dict[str, str | None] | None = None) -> str | None:
    """``None`` when the server at ``target`` reports SERVING, else why not. ``tls_files``: TLS with
    ``ca_file``, ``cert_file``, ``key_file``, ``server_name`` (each may be None)."""
    try:
        files: dict[str, str | None] = {name: None for name in TLS_FLAGS}
        channel = _channel(target, files | (tls_files or {}))
    except (OSError, ValueError) as error:
        return f"TLS files: {error}"
    with channel:
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
    for name in TLS_FLAGS:
        variable = f"LAYERMASK_HEALTHCHECK_TLS_{name.upper()}"
        parser.add_argument(f"--tls-{name.replace('_', '-')}", default=os.environ.get(variable) or None,
                            help=f"TLS {name.replace('_', ' ')} (default: ${variable})")
    args = parser.parse_args(argv)
    tls_files = {name: getattr(args, f"tls_{name}") for name in TLS_FLAGS}
    problem = (torchserve_healthy(args.torchserve_ping, args.timeout) if args.torchserve_ping
               else grpc_serving(args.target, args.timeout, tls_files))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
