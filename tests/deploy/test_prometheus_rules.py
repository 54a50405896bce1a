"""The Prometheus rules, local Prometheus config and Grafana dashboard, checked offline with promtool.

The rules live in one place, the PrometheusRule deploy/k8s/base/prometheusrule.yaml;
deploy/prometheus/rules.yml is generated from it and must not drift.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.prometheus import (
    CONFIG,
    DASHBOARD,
    LOCAL_RULES,
    PROMETHEUS_RULE,
    RULE_TESTS,
    alerts,
    dashboard_expressions,
    metric_names,
    panels,
    recorded_names,
    render_rules,
    rule_groups,
    substitute,
)

pytestmark = pytest.mark.deploy

def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; a missing one fails the test (CI installs it, so a skip would hide a broken setup)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run `make system-packages`", pytrace=False)
    result = subprocess.run([path, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    return rule_groups()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


# ---------------------------------------------------------------- rules


def test_prometheusrule_is_the_layermask_resource() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "layermask"
    assert "namespace" not in resource["metadata"]
    assert resource["metadata"]["labels"] == {"app.kubernetes.io/name": "layermask",
                                              "app.kubernetes.io/part-of": "layermask"}


def test_local_rule_file_is_the_prometheusrule_extraction() -> None:
    assert LOCAL_RULES.read_text() == render_rules(), (
        f"{LOCAL_RULES} differs from the groups of {PROMETHEUS_RULE}: run `python -m tests.helpers.prometheus`")
    assert yaml.safe_load(LOCAL_RULES.read_text()) == {"groups": rule_groups()}


def test_extracted_rules_pass_promtool_check(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    result = promtool("check", "rules", str(rules))
    count = sum(len(group["rules"]) for group in groups)
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_local_prometheus_config_passes_promtool_check() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert "is valid prometheus config file syntax" in result.stdout
    jobs = {job["job_name"]: job for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}
    assert jobs["layermask"]["static_configs"] == [{"targets": ["localhost:9464"]}]
    assert jobs["torchserve"]["static_configs"] == [{"targets": ["localhost:8082"]}]


def test_every_alert_has_severity_summary_description_and_runbook(groups: list[dict[str, Any]]) -> None:
    found = alerts(groups)
    assert {a["alert"] for a in found} >= {
        "LayermaskDown", "LayermaskExplainLatencyHigh", "LayermaskServerErrors", "LayermaskQueueSaturated",
        "LayermaskNoSuccessfulExplanations", "LayermaskBackendUnavailable", "LayermaskTorchServeDown",
        "LayermaskTorchServeErrors"}
    for alert in found:
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"].strip() and alert["annotations"]["description"].strip(), name
        assert alert["annotations"]["runbook"] == f"docs/deploy.md#{name.lower()}", name
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), f"{name} has no (or an odd) for: duration"


def test_promtool_unit_tests_pass() -> None:
    files = sorted(str(path) for path in RULE_TESTS.glob("*.yml"))
    assert files, f"no promtool unit tests in {RULE_TESTS}"
    result = promtool("test", "rules", *files)
    assert "FAILED" not in result.stdout + result.stderr


def test_each_alert_is_unit_tested_firing_and_silent(groups: list[dict[str, Any]]) -> None:
    """Every alert has a promtool case where it fires and one where it stays silent."""
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS.glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts(groups)}
    assert names - fired == set(), "alerts never made to fire"
    assert names - silent == set(), "alerts never checked silent"


# ---------------------------------------------------------------- the dashboard


def test_dashboard_is_importable_json_with_template_variables(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "layermask"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "masking"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_every_dashboard_panel_has_a_promql_target(dashboard: dict[str, Any]) -> None:
    found = list(panels(dashboard))
    assert len(found) >= 6
    for panel in found:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert exprs and all(e.strip() for e in exprs), f"panel {panel['title']!r} has no PromQL target"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " ".join(panel["title"].lower() for panel in found)
    for topic in ("latency", "request", "error", "in-flight", "queue", "batch", "stage", "torchserve"):
        assert topic in titles, f"no panel about {topic}"


def test_dashboard_recording_rules_exist(dashboard: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    recorded = recorded_names(groups)
    for title, expr in dashboard_expressions(dashboard):
        for name in metric_names(substitute(expr)):
            if ":" in name:
                assert name in recorded, f"panel {title!r} reads {name}, which no rule records"


def test_dashboard_expressions_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each expression (with its template variables substituted), as a recording rule."""
    rules = [{"record": f"dashboard:expr_{i}", "expr": substitute(expr)}
             for i, (_title, expr) in enumerate(dashboard_expressions(dashboard))]
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))


def test_metric_names_lexer() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{code=~"OK|x"}[5m]))) / on() group_left() '
            '(b:c:d or vector(0)) > bool 1e3 and up{job="x"} offset 5m')
    assert metric_names(expr) == {"a_bucket", "b:c:d", "up"}
    assert substitute('rate(x{m=~"$model"}[$__rate_interval]) ${masking}') == 'rate(x{m=~".*"}[1m]) .*'
