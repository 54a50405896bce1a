"""End to end: a real Prometheus, with the shipped config and rules, scraping a live service and TorchServe.

The service (TorchServe backend) and TorchServe run on free loopback ports; Prometheus gets the
shipped deploy/prometheus/prometheus.yml with only its targets and intervals (1 s) rewritten, and
the rules of the PrometheusRule. The test sends a few small explanations, then runs every dashboard
expression and recording rule against Prometheus, checks that each metric name they read is
exported by the live service or TorchServe, stops the service and TorchServe and waits for their
"down" alerts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from skimage import data

from layermask_service.client import ExplainClient, explain_request
from layermask_service.torchserve.archive import build_archive
from layermask_service.torchserve.process import TorchServeProcess
from tests.helpers.prometheus import (
    DASHBOARD,
    PrometheusProcess,
    alerts,
    dashboard_expressions,
    exported_names,
    local_config,
    metric_names,
    recorded_names,
    render_rules,
    rule_groups,
    substitute,
)
from tests.helpers.service import LOOPBACK, RunningServer, png_bytes, wait_for
from tests.helpers.torchserve import ARCHIVE, MODEL

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.torchserve,
    pytest.mark.slow,
]

CHELSEA = png_bytes(data.chelsea())
P95 = "histogram_quantile(0.95, sum by (le) (rate(layermask_explain_latency_seconds_bucket[1m])))"
# Synthetic series Prometheus makes for every scrape, not on any /metrics page.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Generous bounds: the machine that runs this may be small and busy.
SCRAPED_BOUND = 90.0
RULES_BOUND = 90.0
ALERT_BOUND = 90.0


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def _explain(client: ExplainClient, masking: str, seed: int) -> None:
    response = client.explain(explain_request(CHELSEA, masking=masking, segmentation="grid", num_samples=32,
                                              seed=seed, top_labels=1))
    assert response.explanations


def _has_series(prometheus: PrometheusProcess, *expressions: str) -> bool:
    return all(prometheus.query(expression) for expression in expressions)


def _finite(result: list[dict[str, Any]]) -> bool:
    return bool(result) and all(math.isfinite(float(sample["value"][1])) for sample in result)


def test_prometheus_scrapes_the_service_and_torchserve_and_alerts_when_they_stop() -> None:
    started = time.monotonic()
    groups = rule_groups()
    recorded = recorded_names(groups)
    dashboard = json.loads(DASHBOARD.read_text())
    scratch = Path(tempfile.mkdtemp(prefix="layermask-prometheus-live-"))
    torchserve: TorchServeProcess | None = None
    server: RunningServer | None = None
    prometheus: PrometheusProcess | None = None
    try:
        store = scratch / "model_store"
        store.mkdir()
        build_archive(MODEL, store, settings=ARCHIVE)
        torchserve = TorchServeProcess(store, [MODEL], free_ports=True, workdir=scratch / "torchserve")
        torchserve.start()
        server = RunningServer(dataclasses.replace(LOOPBACK, models=(MODEL,), backend="torchserve",
                                                   torchserve_target=torchserve.grpc_target, health_interval=0.5))
        service_metrics = f"127.0.0.1:{server.server.metrics_port}"
        torchserve_metrics = urllib.parse.urlparse(torchserve.properties["metrics_address"]).netloc
        rules = scratch / "rules.yml"
        rules.write_text(render_rules())
        prometheus = PrometheusProcess(local_config({"layermask": [service_metrics],
                                                     "torchserve": [torchserve_metrics]}, rules))
        prometheus.wait_ready()
        live = prometheus
        wait_for(lambda: live.target_health() == {"layermask": "up", "torchserve": "up"}, SCRAPED_BOUND,
                 "Prometheus to scrape both targets", interval=0.5)

        with ExplainClient(server.target, timeout=120) as client:
            # The first call creates the labelled series; rates need them scraped before the next calls.
            _explain(client, "layer", seed=1)
            wait_for(lambda: _has_series(live, "layermask_explain_latency_seconds_count", "HandlerLatency_count",
                                         "RowsPerForward_count", "ts_inference_requests_total"),
                     SCRAPED_BOUND, "the first explanation's series in Prometheus", interval=0.5)
            for seed, masking in enumerate(("layer", "grey"), start=2):
                _explain(client, masking, seed)

        wait_for(lambda: _finite(live.query(P95)), RULES_BOUND, "a finite explain p95 latency", interval=0.5)
        p95 = float(live.query(P95)[0]["value"][1])
        assert 0 < p95 <= 120, p95

        # Every recording rule yields a value (each is evaluated every second).
        wait_for(lambda: all(live.query(name) for name in recorded), RULES_BOUND,
                 f"values of all recording rules {sorted(recorded)}", interval=0.5)
        # (grey's series began with its only call: no rate, so no quantile yet)
        assert _finite(live.query('layermask:explain_latency_seconds:p95_5m{masking="layer"}'))
        assert float(live.query("layermask:requests_server_errors:ratio_rate5m")[0]["value"][1]) == 0

        exported = exported_names(_fetch(f"http://{service_metrics}/metrics")) | exported_names(
            _fetch(torchserve.metrics_url))
        for title, expression in dashboard_expressions(dashboard):
            query = substitute(expression)
            prometheus.query(query)  # PrometheusError on any API error
            for name in metric_names(query):
                if name in recorded:
                    assert prometheus.query(name), f"panel {title!r}: recording rule {name} has no value"
                else:
                    assert name in exported | SYNTHETIC, (
                        f"panel {title!r} reads {name}, which neither the service nor TorchServe exports")
        for alert in alerts(groups):
            prometheus.query(alert["expr"])
        assert not prometheus.alert_states(), "alerts active on a healthy service"

        server.stop()
        server = None
        wait_for(lambda: live.alert_states().get("LayermaskDown") in ("pending", "firing"), ALERT_BOUND,
                 "the LayermaskDown alert after the service stopped", interval=0.5)
        torchserve.stop()
        wait_for(lambda: live.alert_states().get("LayermaskTorchServeDown") in ("pending", "firing"),
                 ALERT_BOUND, "the LayermaskTorchServeDown alert after TorchServe stopped", interval=0.5)
    except Exception:
        if prometheus is not None:
            print(f"prometheus log:\n{prometheus.log()}")
        raise
    finally:
        if server is not None:
            server.stop()
        if torchserve is not None:
            torchserve.close()
        if prometheus is not None:
            prometheus.close()
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"live Prometheus test took {time.monotonic() - started:.1f} s")
