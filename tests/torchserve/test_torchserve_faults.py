"""TorchServe failing under load: the service's calls fail UNAVAILABLE, never INTERNAL nor past their
deadline, and it recovers without a restart once TorchServe (or its worker) is back.

The runs are bench/faults.py's (the figures of docs/reliability.md); each starts a TorchServe of its
own from the session's archive, on free ports, since it kills it or its worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import torchserve_kill, worker_crash

pytestmark = pytest.mark.slow


def test_torchserve_killed_mid_load_gives_unavailable_then_the_service_recovers(model_store: Path) -> None:
    result = torchserve_kill(model_store, concurrency=4)
    assert result["hangs"] == 0 and result["not_actionable"] == 0, result
    assert set(result["in_flight_at_kill"]) <= {"OK", "UNAVAILABLE"}, result
    assert "UNAVAILABLE" in result["during_outage"], result
    assert set(result["during_outage"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, result
    assert result["after_restart"].get("OK", 0) >= 2, result  # the same service, not restarted
    assert result["final_explain_ok"], result


def test_a_crashed_torchserve_worker_is_replaced_and_calls_succeed_again(model_store: Path) -> None:
    result = worker_crash(model_store, concurrency=4)
    assert result["hangs"] == 0 and result["not_actionable"] == 0, result
    assert set(result["in_flight_at_crash"]) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, result
    assert result["after_worker_ready"].get("OK", 0) >= 2, result
    assert result["frontend_alive"] and result["serving_after"], result
