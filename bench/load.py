"""Load on a real ``layermask serve`` subprocess: many Explain calls, some malformed, at a fixed concurrency.

The service runs as its own process on loopback (``python -m layermask_service.cli serve --port 0
--metrics-port 0 ...``), so the resident memory read from ``/proc/PID/status`` is the server's
alone. A grpc.aio client keeps ``--concurrency`` calls in flight until ``--calls`` have been made;
a fifth of them are malformed (an empty image, an unknown masking enum, ``num_samples`` over the
limit, a bad segmentation parameter), the others ask for a small explanation (16–32 samples of a
64×64 image on a 16-pixel grid), each with a deadline. Every run is repeated at the default
``--max-queue`` 4 and at 32; with ``--backend torchserve`` (or ``both``) a TorchServe is started
here from a freshly built archive on free loopback ports, and the service sends its batches there.

Reports, per backend and queue: calls per status code (and which kind of call got it), the
latency percentiles of the successful calls, throughput, the server's RSS before and after, and
whether any call outlived its deadline (a hang). Prints a Markdown table and JSON.

    .venv/bin/python bench/load.py [--calls 1000] [--concurrency 16] [--backend both] [--seed 0] [--json OUT]

The pieces (:class:`ServiceProcess`, :func:`make_requests`, :func:`drive`, :func:`summarize`) are
also used by bench/faults.py and the fault tests (imported there as ``bench.load``).

(Over 300 lines: one script reproduces the load table end to end: the service and TorchServe
started, the traffic, the report.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

with contextlib.suppress(ModuleNotFoundError):  # run as a script; imported as bench.load, bench/ is not on sys.path
    import _unshadow  # noqa: F401  (before anything imports onnx: bench/onnx.py would shadow it)

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from layermask_service.client import explain_request, segmentation_message
from layermask_service.proto import explain_pb2 as pb
from layermask_service.proto import explain_pb2_grpc as pb_grpc
from layermask_service.settings import MAX_SAMPLES

MODEL = "efficientnet_lite0"
REPO = Path(__file__).resolve().parent.parent
SERVING = health_pb2.HealthCheckResponse.SERVING
HANG_SLACK_SECONDS = 5.0  # a call that ends later than its deadline plus this is counted as a hang
MALFORMED_KINDS = ("empty_image", "bad_masking", "too_many_samples", "bad_segmentation")
ACTIONABLE = frozenset({"OK", "INVALID_ARGUMENT", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED",
                        "RESOURCE_EXHAUSTED"})
"""The codes a client can act on (retry, back off, fix its request); INTERNAL and UNKNOWN are not."""


# ---------------------------------------------------------------- the service, as a subprocess
def read_rss_bytes(pid: int) -> int:
    """``VmRSS`` of ``pid`` from ``/proc/PID/status``, in bytes (0 if it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def process_table() -> dict[int, tuple[int, str]]:
    """pid → (ppid, command line) of every process that can be read in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name in parentheses may hold spaces
        table[int(entry.name)] = (ppid, cmdline)
    return table


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), by walking the ppid links."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def torchserve_workers(launcher_pid: int) -> list[int]:
    """TorchServe's Python model workers: the descendants of its launcher running ``model_service_worker``."""
    table = process_table()
    return [pid for pid in descendants(launcher_pid) if "model_service_worker" in table.get(pid, (0, ""))[1]]


try:  # loaded here, not in the forked child, where another thread might have held the loader's lock
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the thread that started it ends (a benchmark or test
    killed by ``timeout`` leaves no service behind). Linux only; elsewhere nothing."""
    with contextlib.suppress(AttributeError):
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServiceProcess:
    """``layermask serve`` on loopback in a subprocess, on ports it picks itself (read from its log).

    ``flags`` are further ``serve`` flags (``--max-queue 32``, ``--backend torchserve``, ...),
    ``env`` further ``LAYERMASK_*`` settings. :meth:`start` waits until health reports SERVING; call it
    from a thread that outlives the service (the main thread): the service gets SIGTERM when it ends.
    """

    def __init__(self, flags: Sequence[str] = (), env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.flags = list(flags)
        self.env = env or {}
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="layermask-serve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> None:
        command = [sys.executable, "-m", "layermask_service.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--metrics-host", "127.0.0.1", "--metrics-port", "0", *self.flags]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"listening on 127\.0\.0\.1:(\d+)\b.*?metrics on 127\.0\.0\.1:(\d+)")
        while True:
            found = pattern.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port, self.metrics_port = int(found.group(1)), int(found.group(2))
                if self.health() == SERVING:
                    return
            if self.process.poll() is not None:
                raise OSError(f"layermask serve exited with status {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"layermask serve was not SERVING within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def health(self, timeout: float = 2.0) -> int | None:
        """The overall health status, or None if the service does not answer."""
        with grpc.insecure_channel(self.target) as channel:
            try:
                return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                     timeout=timeout).status)
            except grpc.RpcError:
                return None

    @contextlib.contextmanager
    def channel_stub(self) -> Iterator[pb_grpc.ExplainServiceStub]:
        """A blocking stub on a channel of its own, closed on exit."""
        with grpc.insecure_channel(self.target) as channel:
            yield pb_grpc.ExplainServiceStub(channel)

    def rss(self) -> int:
        return read_rss_bytes(self.pid)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``/metrics``: sample (name, sorted labels) → value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM; the exit status, or None if it is still running after ``timeout`` seconds."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def close(self, grace: float = 30.0) -> int | None:
        """Stop (SIGTERM, then SIGKILL after ``grace``); the exit status of the SIGTERM, None if it was killed."""
        status = None
        if self.process is not None and self.process.poll() is None:
            status = self.terminate(grace)
        elif self.process is not None:
            status = self.process.returncode
        self.kill()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
        return status

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the calls
@dataclasses.dataclass(frozen=True)
class Planned:
    """One call to make: its kind (``valid`` or a malformed kind), the request, its deadline (s), and
    optionally when (s after it starts) the client cancels it."""

    kind: str
    request: pb.ExplainRequest
    timeout: float
    cancel_after: float | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: str
    code: str
    seconds: float
    timeout: float
    started: float  # time.monotonic() when it was made
    details: str = ""

    @property
    def hung(self) -> bool:
        return self.seconds > self.timeout + HANG_SLACK_SECONDS


def tiny_png(size: int = 64, seed: int = 0) -> bytes:
    """A small RGB image: smooth blobs, so the prediction is stable and segmentation has something to cut."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def valid_request(rng: np.random.Generator, image: bytes, samples: tuple[int, int] = (16, 32)) -> pb.ExplainRequest:
    return explain_request(image, segmentation="grid", segmentation_params={"patch_size": 16},
                           num_samples=int(rng.integers(samples[0], samples[1] + 1)),
                           seed=int(rng.integers(0, 2**31)))


def malformed_request(kind: str, rng: np.random.Generator, image: bytes) -> pb.ExplainRequest:
    request = valid_request(rng, image)
    if kind == "empty_image":
        request.image = b""
    elif kind == "bad_masking":
        request.masking = 99  # not a Masking value (proto3 enums are open)
    elif kind == "too_many_samples":
        request.num_samples = MAX_SAMPLES + 1
    elif kind == "bad_segmentation":
        request.segmentation.CopyFrom(segmentation_message("slic", {"n_segments": -3}))
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return request


def make_requests(calls: int, seed: int, *, malformed: float = 0.2, timeout: float = 60.0,
                  samples: tuple[int, int] = (16, 32)) -> list[Planned]:
    """``calls`` calls in a seeded random order, ``malformed`` of them malformed (the kinds in turn)."""
    rng = np.random.default_rng(seed)
    image = tiny_png(seed=seed)
    bad = round(calls * malformed)
    kinds = [MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i in range(bad)] + ["valid"] * (calls - bad)
    rng.shuffle(kinds)
    return [Planned(kind, valid_request(rng, image, samples) if kind == "valid" else
                    malformed_request(kind, rng, image), timeout) for kind in kinds]


async def _one(stub: pb_grpc.ExplainServiceStub, planned: Planned) -> Outcome:
    started = time.monotonic()
    call = stub.Explain(planned.request, timeout=planned.timeout)
    if planned.cancel_after is not None:
        asyncio.get_running_loop().call_later(planned.cancel_after, call.cancel)
    code, details = "OK", ""
    try:
        await call
    except asyncio.CancelledError:  # awaiting a call that the client cancelled
        if not call.cancelled():
            raise
        code = "CANCELLED"
    except grpc.aio.AioRpcError as error:
        code, details = error.code().name, error.details() or ""
    return Outcome(planned.kind, code, time.monotonic() - started, planned.timeout, started, details)


async def drive(target: str, planned: Sequence[Planned], concurrency: int,
                on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Make the ``planned`` calls to ``target``, ``concurrency`` at a time; their outcomes in the order made."""
    outcomes: list[Outcome] = []
    queue: Iterator[Planned] = iter(planned)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ExplainServiceStub(channel)

        async def worker() -> None:
            for item in queue:  # a shared iterator: each call is made once
                outcome = await _one(stub, item)
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(outcomes: Sequence[Outcome], wall_seconds: float) -> dict[str, Any]:
    ok = [o.seconds for o in outcomes if o.code == "OK"]
    by_kind: dict[str, Counter[str]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, Counter())[outcome.code] += 1
    return {
        "calls": len(outcomes),
        "codes": dict(Counter(o.code for o in outcomes).most_common()),
        "codes_by_kind": {kind: dict(counts.most_common()) for kind, counts in sorted(by_kind.items())},
        "ok_latency_s": {"p50": percentile(ok, 50), "p95": percentile(ok, 95), "p99": percentile(ok, 99),
                         "max": max(ok, default=float("nan"))},
        "latency_max_s": max((o.seconds for o in outcomes), default=float("nan")),
        "wall_s": wall_seconds,
        "calls_per_s": len(outcomes) / wall_seconds if wall_seconds else float("nan"),
        "ok_per_s": len(ok) / wall_seconds if wall_seconds else float("nan"),
        "hangs": sum(o.hung for o in outcomes),
        "not_actionable": sum(o.code not in ACTIONABLE for o in outcomes),
        "malformed_not_invalid_argument": sum(o.kind != "valid" and o.code not in ("INVALID_ARGUMENT",
                                                                                  "RESOURCE_EXHAUSTED")
                                              for o in outcomes),
    }


def wait_until(condition: Callable[[], bool], bound: float, what: str, interval: float = 0.1) -> float:
    """Poll ``condition`` until it holds; the seconds it took; ``TimeoutError`` naming ``what`` after ``bound``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > bound:
            raise TimeoutError(f"waited {bound:.0f} s for {what}")
        time.sleep(interval)
    return time.monotonic() - started


# ---------------------------------------------------------------- one load run
def load_run(flags: Sequence[str], planned: Sequence[Planned], concurrency: int) -> dict[str, Any]:
    """Start a service with ``flags``, warm it up, drive ``planned`` through it, stop it with SIGTERM."""
    service = ServiceProcess(flags)
    service.start()
    try:
        asyncio.run(drive(service.target, make_requests(2, seed=12345, malformed=0.0), 1))  # warm-up
        rss_before = service.rss()
        started = time.monotonic()
        outcomes = asyncio.run(drive(service.target, planned, concurrency))
        wall = time.monotonic() - started
        rss_after = service.rss()
        wait_until(lambda: service.metric("layermask_inflight_requests") == 0
                   and service.metric("layermask_queue_depth") == 0, 60, "the in-flight gauge to return to 0")
        result = summarize(outcomes, wall)
        result.update(rss_before_mib=rss_before / 2**20, rss_after_mib=rss_after / 2**20,
                      serving_after=service.health() == SERVING)
    finally:
        result_status = service.close()
    result["exit_status_on_sigterm"] = result_status
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backend", choices=("embedded", "torchserve", "both"), default="both")
    parser.add_argument("--queues", default="4,32", help="the --max-queue values to run, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=60.0, help="each call's deadline in seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    queues = [int(q) for q in args.queues.split(",")]
    planned = make_requests(args.calls, args.seed, timeout=args.deadline)
    backends = ["embedded", "torchserve"] if args.backend == "both" else [args.backend]
    results: list[dict[str, Any]] = []
    for backend in backends:
        with contextlib.ExitStack() as stack:
            flags = []
            if backend == "torchserve":
                flags = ["--backend", "torchserve", "--torchserve-target", _start_torchserve(stack)]
            for queue in queues:
                print(f"{backend}, --max-queue {queue}: {args.calls} calls at concurrency {args.concurrency} ...",
                      file=sys.stderr, flush=True)
                result = load_run([*flags, "--max-queue", str(queue)], planned, args.concurrency)
                results.append({"backend": backend, "max_queue": queue, "max_concurrent": 1, **result})
                print(table(results[-1:]), file=sys.stderr, flush=True)
                if args.json is not None:  # after each run, so that an interrupted run keeps what it measured
                    args.json.write_text(json.dumps(_report(args, planned, results), indent=2) + "\n")
    print(table(results))
    print(json.dumps(_report(args, planned, results), indent=2))


def _report(args: argparse.Namespace, planned: Sequence[Planned], results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d"), "calls": args.calls, "concurrency": args.concurrency,
            "seed": args.seed, "deadline_s": args.deadline, "cores": os.cpu_count(),
            "malformed": Counter(p.kind for p in planned if p.kind != "valid"), "runs": results}


def _start_torchserve(stack: contextlib.ExitStack) -> str:
    from layermask_service.torchserve.archive import ArchiveSettings, build_archive
    from layermask_service.torchserve.process import TorchServeProcess

    store = stack.enter_context(tempfile.TemporaryDirectory(prefix="layermask-load-store-"))
    build_archive(MODEL, store, settings=ArchiveSettings())
    torchserve = TorchServeProcess(store, [MODEL], free_ports=True)
    stack.callback(torchserve.close)
    torchserve.start()
    return torchserve.grpc_target


def table(results: Sequence[dict[str, Any]]) -> str:
    codes = sorted({code for r in results for code in r["codes"]}, key=lambda c: (c != "OK", c))
    head = ["backend", "queue", *codes, "OK p50 (s)", "p95", "p99", "calls/s", "OK/s", "RSS before→after (MiB)",
            "hangs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        latency = r["ok_latency_s"]
        row = [r["backend"], str(r["max_queue"]), *(str(r["codes"].get(c, 0)) for c in codes),
               f"{latency['p50']:.2f}", f"{latency['p95']:.2f}", f"{latency['p99']:.2f}",
               f"{r['calls_per_s']:.1f}", f"{r['ok_per_s']:.2f}",
               f"{r['rss_before_mib']:.0f}→{r['rss_after_mib']:.0f}", str(r["hangs"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
