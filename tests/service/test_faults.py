"""Faults under load on a real ``layermask serve`` subprocess: SIGTERM, and clients cancelling at random.

The runs are bench/faults.py's (the figures of docs/reliability.md); here their goals are asserted:
no call outlives its deadline, every failure has a status a client can act on, the service exits 0
on SIGTERM within its grace period, and after a storm of cancellations it is idle, SERVING and answers.
"""

from __future__ import annotations

import pytest

from bench.faults import cancel, sigterm

pytestmark = pytest.mark.slow
TEARDOWN_SECONDS = 20.0  # after the grace period: the cancelled compute's last batch, and the interpreter's exit


def test_sigterm_under_load_ends_every_call_actionably_and_exits_zero() -> None:
    result = sigterm(concurrency=16, grace=5.0)
    assert result["hangs"] == 0 and result["not_actionable"] == 0, result
    assert result["exit_status"] == 0, result
    assert result["exit_s_after_sigterm"] < result["grace_s"] + TEARDOWN_SECONDS, result
    assert set(result["in_flight_at_sigterm"]) <= {"OK", "UNAVAILABLE", "CANCELLED"}, result
    assert result["in_flight_ended_s_after_sigterm"] < result["grace_s"] + 5, result
    assert set(result["after_sigterm"]) <= {"UNAVAILABLE"}, result


def test_random_cancellations_leave_the_service_idle_serving_and_steady() -> None:
    result = cancel(calls=120, concurrency=16)
    assert result["hangs"] == 0 and result["not_actionable"] == 0, result
    assert set(result["by_style"]["cancelled"]) <= {"CANCELLED", "OK"}, result
    assert set(result["by_style"]["short_deadline"]) <= {"DEADLINE_EXCEEDED", "OK"}, result
    assert set(result["by_style"]["valid"]) == {"OK"}, result
    assert result["serving_after"] and result["final_explain_ok"], result
    # cancel() waited (bounded) for layermask_inflight_requests and layermask_queue_depth to return to 0
    assert result["rss_after_mib"] < 1.2 * result["rss_settled_mib"] + 200, result
