"""The installed ``layermask`` command: the core's commands plus ``serve`` and ``client``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layermask import cli as core_cli
from layermask.explanation.options import AUTO, DEFAULT_METHOD, METHODS
from layermask.masking.names import DEFAULT_MASKING, MASKING_STRATEGIES
from layermask.models.registry import DEFAULT_MODEL
from layermask_service.torchserve.archive import FORMATS, ArchiveSettings, build_archive


def add_commands(commands: Any) -> None:
    """Add ``serve``, ``torchserve``, ``archive`` and ``client`` to the core's subcommands."""
    _add_serve(commands)
    _add_torchserve(commands)
    _add_archive(commands)
    _add_client(commands)


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the gRPC ExplainService")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--metrics-host")
    serve.add_argument("--metrics-port", type=int)
    serve.add_argument("--models", help="comma-separated model names (the first is the default)")
    serve.add_argument("--max-concurrent", type=int)
    serve.add_argument("--max-queue", type=int)
    serve.add_argument("--grace-seconds", type=float)
    serve.add_argument("--cache-mib", type=float, metavar="MIB",
                       help="size of the cache of explanations that set a seed (default 64; 0: off)")
    serve.add_argument("--backend", choices=("embedded", "torchserve"),
                       help="where masked batches run (default: embedded, in this process)")
    serve.add_argument("--device", metavar="cpu|cuda|cuda:N",
                       help="where the embedded backend runs the models (default: cpu)")
    serve.add_argument("--torchserve-target", metavar="HOST:PORT",
                       help="TorchServe's gRPC inference address, a comma-separated list of them, or "
                            "dns:///NAME:PORT (resolved every 15 s); batches go round-robin to every address")
    serve.add_argument("--start-torchserve", type=Path, metavar="MODEL_STORE",
                       help="also start TorchServe with the archives of MODEL_STORE (and stop it on exit); "
                            "implies --backend torchserve")
    serve.add_argument("--torchserve-config", type=Path, help="TorchServe config.properties for --start-torchserve "
                                                              "(default: the one shipped in the package)")
    security = serve.add_argument_group("security (docs/security.md)")
    security.add_argument("--tls-cert-file", metavar="PEM", help="serve gRPC over TLS with this certificate (chain)")
    security.add_argument("--tls-key-file", metavar="PEM", help="the private key of --tls-cert-file")
    security.add_argument("--tls-client-ca-file", metavar="PEM",
                          help="also require client certificates signed by this CA (mTLS)")
    security.add_argument("--metrics-tls-cert-file", metavar="PEM", help="serve /metrics over HTTPS")
    security.add_argument("--metrics-tls-key-file", metavar="PEM", help="the private key of --metrics-tls-cert-file")
    security.add_argument("--auth-token-file", metavar="FILE",
                          help="require a bearer token from this file (one a line; re-read on change and SIGHUP); "
                               "health and reflection stay open")


def _add_torchserve(commands: Any) -> None:
    torchserve = commands.add_parser("torchserve", help="run TorchServe alone with layermask's handler (a TorchServe "
                                                        "pod), building missing archives first")
    torchserve.add_argument("--model-store", type=Path, required=True,
                            help="directory of .mar archives (writable: missing ones are built into it)")
    torchserve.add_argument("--models", default=DEFAULT_MODEL, help="comma-separated model names")
    torchserve.add_argument("--public-host", metavar="ADDRESS",
                            help="also serve gRPC inference and metrics on ADDRESS (e.g. 0.0.0.0 in a pod); "
                                 "the management API stays on 127.0.0.1")
    torchserve.add_argument("--config", type=Path, help="TorchServe config.properties (default: the shipped one)")
    torchserve.add_argument("--workdir", type=Path, help="logs and scratch files (default: a new temporary directory)")
    torchserve.add_argument("--start-timeout", type=float, default=600.0, metavar="S",
                            help="seconds to wait for every model's first worker (default 600)")


def _add_archive(commands: Any) -> None:
    archive = commands.add_parser("archive", help="build a TorchServe model archive (.mar) of a model")
    archive.add_argument("--model", default=DEFAULT_MODEL)
    archive.add_argument("--weights", type=Path, help="local weights file (state dict)")
    archive.add_argument("--format", choices=FORMATS, default="torch",
                         help="torch: the PyTorch model; onnx: the exported layer-masked ONNX model")
    archive.add_argument("-o", "--output", type=Path, default=Path("model_store"), help="directory for the .mar")
    archive.add_argument("--batch-size", type=int, default=ArchiveSettings.batch_size,
                         help="requests TorchServe gathers into one handler call")
    archive.add_argument("--max-batch-delay", type=int, default=ArchiveSettings.max_batch_delay_ms, metavar="MS")
    archive.add_argument("--workers", type=int, default=ArchiveSettings.workers)
    archive.add_argument("--response-timeout", type=int, default=ArchiveSettings.response_timeout_s, metavar="S")
    archive.add_argument("--max-rows-per-forward", type=int, default=ArchiveSettings.max_rows_per_forward)
    archive.add_argument("--context-cache-entries", type=int, default=ArchiveSettings.context_cache_entries,
                         help="explanation images and segments each worker keeps, so batches can name them by digest")


def _add_client(commands: Any) -> None:
    client = commands.add_parser("client", help="call a running ExplainService")
    actions = client.add_subparsers(dest="client_command", required=True, parser_class=core_cli.Parser)
    explain = actions.add_parser("explain", help="explain an image through the service")
    explain.add_argument("image", type=Path)
    explain.add_argument("--target", default="localhost:50051", help="HOST:PORT of the service")
    explain.add_argument("--model", default="")
    explain.add_argument("--masking", choices=MASKING_STRATEGIES, default=DEFAULT_MASKING)
    explain.add_argument("--segmentation", default="quickshift", metavar="METHOD[:k=v,...]")
    explain.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD)
    explain.add_argument("--samples", type=_samples, metavar="N|auto",
                         help="perturbations to score, or auto: until the weights settle (lime, kernel_shap)")
    explain.add_argument("--seed", type=int)
    labels = explain.add_mutually_exclusive_group()
    labels.add_argument("--label", type=int, action="append")
    labels.add_argument("--top-labels", type=int)
    explain.add_argument("--timeout", type=float, help="deadline in seconds")
    explain.add_argument("-o", "--output", type=Path, required=True,
                         help="PNG overlay to write, on the photo at its resolution (outside the crop greyed out)")
    explain.add_argument("--crop", action="store_true", help="draw the overlay on the model's input crop instead")
    explain.add_argument("--json", type=Path, help="also write the response as JSON")
    security = explain.add_argument_group("security (docs/security.md)")
    security.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
    security.add_argument("--tls-ca-file", metavar="PEM", help="use TLS, trusting this CA")
    security.add_argument("--tls-cert-file", metavar="PEM", help="client certificate, for mTLS")
    security.add_argument("--tls-key-file", metavar="PEM", help="the private key of --tls-cert-file")
    security.add_argument("--tls-server-name", metavar="NAME", help="name to check in the server's certificate "
                                                                   "(default: the host of --target)")
    security.add_argument("--token-file", metavar="FILE", help="send the first token of FILE as a bearer token")


def _samples(value: str) -> int | str:
    """``--samples``: an integer, or ``auto``."""
    return AUTO if value == AUTO else int(value)


def run_serve(args: argparse.Namespace) -> None:
    from layermask_service.server import run
    from layermask_service.settings import load_settings

    overrides = {"host": args.host, "port": args.port, "metrics_host": args.metrics_host,
                 "metrics_port": args.metrics_port, "models": args.models, "max_concurrent": args.max_concurrent,
                 "max_queue": args.max_queue, "grace_seconds": args.grace_seconds, "cache_mib": args.cache_mib,
                 "backend": args.backend,
                 "torchserve_target": args.torchserve_target, "device": args.device,
                 **{name: getattr(args, name) for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file",
                                                           "metrics_tls_cert_file", "metrics_tls_key_file",
                                                           "auth_token_file")}}
    settings = load_settings(args.config, overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.start_torchserve is None:
        asyncio.run(run(settings))
        return
    from layermask_service.torchserve.process import TorchServeProcess

    for name in settings.models:
        if not (args.start_torchserve / f"{name}.mar").is_file():
            raise FileNotFoundError(f"no archive {args.start_torchserve / f'{name}.mar'}; build it with "
                                    f"`layermask archive --model {name} -o {args.start_torchserve}`")
    # Logs and scratch files in a temporary directory (TMPDIR), so a read-only working directory works.
    torchserve = TorchServeProcess(args.start_torchserve, list(settings.models), config=args.torchserve_config)
    logging.getLogger("layermask.torchserve").info("starting TorchServe (logs in %s)", torchserve.workdir)
    torchserve.start()
    try:
        asyncio.run(run(dataclasses.replace(settings, backend="torchserve", torchserve_target=torchserve.grpc_target)))
    finally:
        torchserve.stop()


def run_torchserve(args: argparse.Namespace) -> None:
    from layermask_service.torchserve.standalone import StandaloneSettings, run_standalone

    models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    if not models:
        raise ValueError("--models must name at least one model")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_standalone(StandaloneSettings(model_store=args.model_store, models=models, config=args.config,
                                      public_host=args.public_host, workdir=args.workdir,
                                      start_timeout=args.start_timeout))


def run_archive(args: argparse.Namespace) -> None:
    settings = ArchiveSettings(batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay,
                               workers=args.workers, response_timeout_s=args.response_timeout,
                               max_rows_per_forward=args.max_rows_per_forward,
                               context_cache_entries=args.context_cache_entries)
    path = build_archive(args.model, args.output, weights=args.weights, fmt=args.format, settings=settings)
    print(f"wrote {path}")


def run_client_explain(args: argparse.Namespace) -> None:
    import grpc
    from google.protobuf import json_format

    from layermask.cli.explain import ProgressBar, parse_segmentation
    from layermask_service.client import ExplainClient, explain_request
    from layermask_service.proto import explain_pb2 as pb

    if not args.image.is_file():
        raise FileNotFoundError(f"image file not found: {args.image}")
    method, params = parse_segmentation(args.segmentation)
    request = explain_request(args.image.read_bytes(), model=args.model, masking=args.masking, segmentation=method,
                              segmentation_params=params, num_samples=args.samples, seed=args.seed,
                              labels=args.label, top_labels=args.top_labels,
                              heatmap_format=pb.HEATMAP_FORMAT_PNG_OVERLAY, method=args.method)
    request.heatmap_view = pb.HEATMAP_VIEW_CROP if args.crop else pb.HEATMAP_VIEW_ORIGINAL
    try:
        with ExplainClient(args.target, timeout=args.timeout, tls_ca_file=args.tls_ca_file,
                           tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                           token_file=args.token_file, tls_server_name=args.tls_server_name,
                           use_tls=args.tls) as client:
            response = client.explain_stream(request, ProgressBar())
    except grpc.RpcError as error:
        raise ConnectionError(f"{error.code().name}: {error.details()}") from None
    for prediction in response.top_predictions:
        print(f"  {prediction.label:4d} {prediction.name:<30} {prediction.probability:7.2%}")
    for explanation in response.explanations:
        print(f"label {explanation.label} ({explanation.name}): R² {explanation.score:.3f}")
    args.output.write_bytes(response.heatmaps[0].data)
    print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json_format.MessageToJson(response))
        print(f"wrote {args.json}")


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = core_cli.build_parser_with_commands()
    add_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return core_cli.guarded(run_serve, args)
    if args.command == "torchserve":
        return core_cli.guarded(run_torchserve, args)
    if args.command == "archive":
        return core_cli.guarded(run_archive, args)
    if args.command == "client":
        return core_cli.guarded(run_client_explain, args)
    return core_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
