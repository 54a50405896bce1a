"""Fault runs against a real ``layermask serve`` subprocess under load; the status of every call is counted.

    .venv/bin/python bench/faults.py [--run all|torchserve-kill|worker-crash|sigterm|cancel] [--seed 0] [--json OUT]

* ``torchserve-kill``: TorchServe (its whole process group) is killed while Explain calls run
  through the service; a new TorchServe is then started on the same ports, and the service must
  recover without a restart (health SERVING, Explain OK).
* ``worker-crash``: TorchServe's Python model worker is killed (not the Java frontend); TorchServe
  starts a new one, and later calls must succeed.
* ``sigterm``: the service gets SIGTERM while calls run; it must exit 0 within its grace period.
* ``cancel``: clients cancel calls at random times or give them short deadlines; afterwards the
  service must be SERVING, with nothing in flight or queued, a normal Explain OK and its RSS steady.

Each run checks the goals: no call outlives its deadline (plus :data:`HANG_SLACK_SECONDS`), every
failure has a status a client can act on (never INTERNAL), and the service recovers on its own.
The tests in tests/service/test_faults.py and tests/torchserve/test_torchserve_faults.py run the
same functions (imported as ``bench.faults``).

(Over 300 lines: the four fault runs share the service and TorchServe set-up and the status
accounting; the tests import them from here.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

if not __package__:  # run as a script: drop bench/ from sys.path (it would shadow onnx and lime), import bench.*
    import _unshadow  # noqa: F401

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.load import (
    ACTIONABLE,
    HANG_SLACK_SECONDS,
    MODEL,
    SERVING,
    Outcome,
    Planned,
    ServiceProcess,
    _one,
    drive,
    make_requests,
    tiny_png,
    torchserve_workers,
    valid_request,
    wait_until,
)
from layermask_service.proto import explain_pb2_grpc as pb_grpc
from layermask_service.torchserve.archive import ArchiveSettings, build_archive
from layermask_service.torchserve.process import PORT_KEYS, TorchServeProcess

# What the TorchServe runs set: a quick health watcher, and a TorchServe call bounded well inside a call's deadline.
TORCHSERVE_ENV = {"LAYERMASK_HEALTH_INTERVAL": "0.5", "LAYERMASK_TORCHSERVE_TIMEOUT": "20"}
DEADLINE_SECONDS = 30.0
TORCHSERVE_DEADLINE_SECONDS = 60.0  # a batch through TorchServe is slower on a loaded 2-core machine
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class BackgroundLoad:
    """Explain calls from ``concurrency`` clients (grpc.aio, in a thread of their own) until :meth:`stop`.

    ``plan(i)`` makes the i-th call. After a failed call a client waits ``backoff`` seconds, as a
    client would, so that a service that is down is not called in a tight loop.
    """

    def __init__(self, target: str, plan: Callable[[int], Planned], concurrency: int, backoff: float = 0.05) -> None:
        self.target, self.plan, self.concurrency, self.backoff = target, plan, concurrency, backoff
        self.outcomes: list[Outcome] = []
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="load")
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # reported by stop()
            self._error = error

    async def _run(self) -> None:
        turns = itertools.count()
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.ExplainServiceStub(channel)

            async def client() -> None:
                while not self._stopping.is_set():
                    outcome = await _one(stub, self.plan(next(turns)))
                    self.outcomes.append(outcome)
                    if outcome.code != "OK":
                        await asyncio.sleep(self.backoff)

            await asyncio.gather(*(client() for _ in range(self.concurrency)))

    def count(self, code: str = "OK", after: float = 0.0) -> int:
        """Calls that ended with ``code`` and started after ``after`` (a time.monotonic())."""
        return sum(o.code == code and o.started > after for o in list(self.outcomes))

    def stop(self, bound: float = TORCHSERVE_DEADLINE_SECONDS + 30) -> list[Outcome]:
        """Let each client finish its call (each is bounded by its deadline) and return every outcome."""
        self._stopping.set()
        self._thread.join(bound)
        if self._thread.is_alive():
            raise TimeoutError(f"the load's calls did not end within {bound:.0f} s")
        if self._error is not None:
            raise self._error
        return self.outcomes


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return dict(Counter(o.code for o in outcomes).most_common())


def ended(outcome: Outcome) -> float:
    return outcome.started + outcome.seconds


def checks(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The goals every run shares: no hang past the deadline, every status actionable."""
    return {"calls": len(outcomes), "codes": counts(outcomes),
            "hangs": sum(o.hung for o in outcomes),
            "not_actionable": sum(o.code not in ACTIONABLE for o in outcomes),
            "not_actionable_details": sorted({f"{o.code}: {o.details}" for o in outcomes
                                              if o.code not in ACTIONABLE})[:5],
            "longest_call_s": max((o.seconds for o in outcomes), default=0.0)}


def planner(seed: int, samples: tuple[int, int] = (16, 32),
            timeout: float = DEADLINE_SECONDS) -> Callable[[int], Planned]:
    """Valid calls, a fresh seed each."""
    image = tiny_png(seed=seed)

    def plan(turn: int) -> Planned:
        return Planned("valid", valid_request(np.random.default_rng([seed, turn]), image, samples), timeout)

    return plan


def poll_health(service: ServiceProcess, want: int, bound: float) -> float:
    return wait_until(lambda: service.health(timeout=1.0) == want, bound, f"health status {want}", interval=0.1)


def fresh_store(stack: contextlib.ExitStack) -> Path:
    store = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="layermask-faults-store-")))
    build_archive(MODEL, store, settings=ArchiveSettings())
    return store


def started_torchserve(stack: contextlib.ExitStack, store: Path,
                       ports_of: TorchServeProcess | None = None) -> TorchServeProcess:
    """A TorchServe on free ports, or on the ports of ``ports_of``; closed with ``stack``."""
    process = TorchServeProcess(store, [MODEL], free_ports=ports_of is None)
    if ports_of is not None:
        for key in PORT_KEYS:
            process.properties[key] = ports_of.properties[key]
    stack.callback(process.close)
    process.start()
    return process


# ---------------------------------------------------------------- the runs
def torchserve_kill(store: Path, seed: int = 0, concurrency: int = 4, after_kill: float = 5.0,
                    deadline: float = TORCHSERVE_DEADLINE_SECONDS) -> dict[str, Any]:
    """Kill TorchServe mid-load; start a new one on the same ports; the service recovers without a restart."""
    with contextlib.ExitStack() as stack:
        torchserve = started_torchserve(stack, store)
        service = ServiceProcess(["--backend", "torchserve", "--torchserve-target", torchserve.grpc_target,
                                  "--max-queue", "32"], env=TORCHSERVE_ENV)
        stack.callback(service.close)
        service.start()
        load = BackgroundLoad(service.target, planner(seed, timeout=deadline), concurrency)
        try:
            wait_until(lambda: load.count() >= concurrency, 300, "calls through TorchServe to succeed")
            killed_at = time.monotonic()
            torchserve.kill()
            not_serving_after = poll_health(service, NOT_SERVING, 30)
            wait_until(lambda: time.monotonic() - killed_at > after_kill, after_kill + 1, "the outage to last")
            restart_at = time.monotonic()
            started_torchserve(stack, store, ports_of=torchserve)
            ready_at = time.monotonic()
            serving_after = poll_health(service, SERVING, 120)
            wait_until(lambda: load.count(after=ready_at) >= 2, 180, "calls to succeed again")
            first_ok = min(ended(o) for o in load.outcomes if o.code == "OK" and o.started > ready_at)
        finally:
            outcomes = load.stop()
        with service.channel_stub() as stub:
            final = stub.Explain(valid_request(np.random.default_rng(seed), tiny_png(seed=seed)), timeout=60)
    in_flight = [o for o in outcomes if o.started < killed_at < ended(o)]
    outage = [o for o in outcomes if killed_at <= o.started < restart_at]
    return {"run": "torchserve-kill", **checks(outcomes),
            "in_flight_at_kill": counts(in_flight),
            "in_flight_ended_s_after_kill": max((ended(o) - killed_at for o in in_flight), default=0.0),
            "during_outage": counts(outage),  # started after the kill, before the new TorchServe was started
            "while_restarting": counts([o for o in outcomes if restart_at <= o.started < ready_at]),
            "after_restart": counts([o for o in outcomes if o.started >= ready_at]),
            "not_serving_s_after_kill": not_serving_after,
            "torchserve_restart_s": ready_at - restart_at,
            "serving_s_after_torchserve_ready": serving_after,
            "first_ok_s_after_torchserve_ready": first_ok - ready_at,
            "final_explain_ok": final.num_samples > 0}


def worker_crash(store: Path, seed: int = 0, concurrency: int = 4,
                 deadline: float = TORCHSERVE_DEADLINE_SECONDS) -> dict[str, Any]:
    """SIGKILL TorchServe's Python worker mid-load; TorchServe restarts it and calls succeed again."""
    with contextlib.ExitStack() as stack:
        torchserve = started_torchserve(stack, store)
        assert torchserve.process is not None
        service = ServiceProcess(["--backend", "torchserve", "--torchserve-target", torchserve.grpc_target,
                                  "--max-queue", "32"], env=TORCHSERVE_ENV)
        stack.callback(service.close)
        service.start()
        launcher = torchserve.process.pid
        workers = torchserve_workers(launcher)
        if len(workers) != 1:
            raise RuntimeError(f"expected one TorchServe worker, found {workers}")
        load = BackgroundLoad(service.target, planner(seed, timeout=deadline), concurrency)
        try:
            wait_until(lambda: load.count() >= concurrency, 300, "calls through TorchServe to succeed")
            crashed_at = time.monotonic()
            os.kill(workers[0], signal.SIGKILL)
            wait_until(lambda: bool(set(torchserve_workers(launcher)) - set(workers)), 120,
                       "TorchServe to start a new worker")
            new_worker_s = time.monotonic() - crashed_at
            wait_until(lambda: torchserve.worker_ready(MODEL), 120, "the new worker to be READY")
            ready_at = time.monotonic()
            wait_until(lambda: load.count(after=ready_at) >= 2, 180, "calls to succeed again")
            first_ok = min(ended(o) for o in load.outcomes if o.code == "OK" and o.started > crashed_at)
        finally:
            outcomes = load.stop()
        frontend_alive = torchserve.process.poll() is None
        serving = service.health() == SERVING
    in_flight = [o for o in outcomes if o.started < crashed_at < ended(o)]
    return {"run": "worker-crash", **checks(outcomes),
            "in_flight_at_crash": counts(in_flight),
            "in_flight_details": sorted({o.details[:160] for o in in_flight if o.code != "OK"})[:3],
            "after_crash_until_ready": counts([o for o in outcomes if crashed_at <= o.started < ready_at]),
            "after_worker_ready": counts([o for o in outcomes if o.started >= ready_at]),
            "new_worker_s_after_crash": new_worker_s,
            "worker_ready_s_after_crash": ready_at - crashed_at,
            "first_ok_s_after_crash": first_ok - crashed_at,
            "frontend_alive": frontend_alive, "serving_after": serving}


def sigterm(seed: int = 0, concurrency: int = 16, grace: float = 5.0) -> dict[str, Any]:
    """SIGTERM the service while 16 clients call it; it must exit 0 within the grace period (plus teardown)."""
    log = Path(tempfile.mkstemp(prefix="layermask-sigterm-", suffix=".log")[1])
    service = ServiceProcess(["--max-queue", "32", "--grace-seconds", str(grace)], log_path=log)
    service.start()
    load = BackgroundLoad(service.target, planner(seed), concurrency)
    try:
        wait_until(lambda: load.count() >= 4, 180, "calls to succeed")
        wait_until(lambda: service.metric("layermask_queue_depth") >= 4, 60, "calls to queue up")
        in_system = service.metric("layermask_queue_depth") + service.metric("layermask_inflight_requests")
        term_at, term_wall = time.monotonic(), time.time()
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        try:
            status: int | None = service.process.wait(grace + 30)
        except Exception:
            status = None
        exited_s = time.monotonic() - term_at
        wait_until(lambda: load.count("UNAVAILABLE", after=term_at + exited_s) >= concurrency, 30,
                   "calls after the exit to fail UNAVAILABLE")
    finally:
        outcomes = load.stop()
        service.close()
        stages = _logged_times(log, {"stopping": "stopping: draining", "stopped": "layermask.server: stopped"})
        log.unlink(missing_ok=True)
    in_flight = [o for o in outcomes if o.started < term_at < ended(o)]
    return {"run": "sigterm", **checks(outcomes), "grace_s": grace, "calls_in_service_at_sigterm": in_system,
            "in_flight_at_sigterm": counts(in_flight),
            "in_flight_ended_s_after_sigterm": max((ended(o) - term_at for o in in_flight), default=0.0),
            "after_sigterm": counts([o for o in outcomes if o.started >= term_at]),
            "exit_status": status, "exit_s_after_sigterm": exited_s,
            "logged_s_after_sigterm": {name: at - term_wall for name, at in stages.items()}}


def _logged_times(log: Path, marks: dict[str, str]) -> dict[str, float]:
    """The wall-clock time (time.time()) of the first log line holding each mark."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        for name, mark in marks.items():
            if mark in line and name not in found:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                found[name] = stamp.timestamp()
    return found


def cancel(seed: int = 0, calls: int = 300, concurrency: int = 16) -> dict[str, Any]:
    """Cancel calls at random times and give others short deadlines; the service is then idle, SERVING and
    answers, and its RSS has not grown beyond what the same number of plain calls leaves."""
    rng = np.random.default_rng(seed)
    service = ServiceProcess(["--max-queue", "32"])
    service.start()
    try:
        # Plain calls first: the allocator keeps freed memory, so RSS settles only after some work.
        plain = asyncio.run(drive(service.target, make_requests(calls // 3, seed, malformed=0.0), concurrency))
        rss_settled = service.rss()
        planned = []
        for item in make_requests(calls, seed + 1, malformed=0.0):
            style = rng.integers(3)
            if style == 0:
                planned.append(Planned("cancelled", item.request, DEADLINE_SECONDS, float(rng.uniform(0, 1.5))))
            elif style == 1:
                planned.append(Planned("short_deadline", item.request, float(rng.uniform(0.05, 1.5))))
            else:
                planned.append(Planned("valid", item.request, DEADLINE_SECONDS))
        started = time.monotonic()
        outcomes = asyncio.run(drive(service.target, planned, concurrency))
        storm_s = time.monotonic() - started
        idle_s = wait_until(lambda: service.metric("layermask_inflight_requests") == 0
                            and service.metric("layermask_queue_depth") == 0, 60, "nothing in flight or queued")
        rss_after = service.rss()
        serving = service.health() == SERVING
        with service.channel_stub() as stub:
            final = stub.Explain(valid_request(rng, tiny_png(seed=seed)), timeout=60)
        server_codes = {dict(labels).get("code", ""): value for (name, labels), value in service.metrics().items()
                        if name == "layermask_requests_total" and dict(labels).get("rpc") == "Explain"}
    finally:
        service.close()
    by_style = {style: counts([o for o in outcomes if o.kind == style])
                for style in ("cancelled", "short_deadline", "valid")}
    return {"run": "cancel", **checks(outcomes), "by_style": by_style, "storm_s": storm_s,
            "plain_calls_first": counts(plain), "idle_s_after_storm": idle_s, "serving_after": serving,
            "final_explain_ok": final.num_samples > 0, "server_counted": server_codes,
            "rss_settled_mib": rss_settled / 2**20, "rss_after_mib": rss_after / 2**20}


RUNS = ("torchserve-kill", "worker-crash", "sigterm", "cancel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=("all", *RUNS), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = RUNS if args.run == "all" else (args.run,)
    results = []
    with contextlib.ExitStack() as stack:
        store = fresh_store(stack) if {"torchserve-kill", "worker-crash"} & set(runs) else None
        for run in runs:
            print(f"{run} ...", file=sys.stderr, flush=True)
            if run == "torchserve-kill":
                assert store is not None
                results.append(torchserve_kill(store, args.seed))
            elif run == "worker-crash":
                assert store is not None
                results.append(worker_crash(store, args.seed))
            elif run == "sigterm":
                results.append(sigterm(args.seed))
            else:
                results.append(cancel(args.seed))
            print(json.dumps(results[-1], indent=2), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "seed": args.seed, "cores": os.cpu_count(),
              "hang_slack_s": HANG_SLACK_SECONDS, "runs": results}
    print("| run | calls | status counts | hangs | not actionable |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['calls']} | {', '.join(f'{k} {v}' for k, v in r['codes'].items())} "
              f"| {r['hangs']} | {r['not_actionable']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
