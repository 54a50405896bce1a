"""The monitoring files of deploy/ and a real Prometheus for the tests.

The PrometheusRule (deploy/k8s/base/prometheusrule.yaml) is the one source of the rules:
deploy/prometheus/rules.yml is generated from it (``python -m tests.helpers.prometheus``) and
tests/deploy/test_prometheus_rules.py checks that the two agree.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_RULE = ROOT / "deploy/k8s/base/prometheusrule.yaml"
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
LOCAL_RULES = PROMETHEUS_DIR / "rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests"
DASHBOARD = ROOT / "deploy/grafana/layermask.json"

GENERATED_HEADER = (
    "# Generated from deploy/k8s/base/prometheusrule.yaml (spec.groups) by `python -m tests.helpers.prometheus`.\n"
    "# Do not edit: change the PrometheusRule and regenerate; a test checks that the two agree.\n"
)

# What a dashboard's template variables stand for when its expressions are run outside Grafana.
TEMPLATE_VALUES = {
    "datasource": "",
    "model": ".*",
    "masking": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}

# PromQL words that look like metric names but are not.
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan", "atan2",
}


# ---------------------------------------------------------------- the rules


def rule_groups(path: Path = PROMETHEUS_RULE) -> list[dict[str, Any]]:
    """``spec.groups`` of the PrometheusRule at ``path``: the rule groups, as Prometheus reads them."""
    resource = yaml.safe_load(path.read_text())
    if resource.get("kind") != "PrometheusRule":
        raise ValueError(f"{path} is not a PrometheusRule (kind {resource.get('kind')!r})")
    groups: list[dict[str, Any]] = resource["spec"]["groups"]
    return groups


class _RulesDumper(yaml.SafeDumper):
    """Writes multi-line strings (the longer expressions) as literal blocks, as they are in the source."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RulesDumper.add_representer(str, _represent_str)


def render_rules(path: Path = PROMETHEUS_RULE) -> str:
    """The text of deploy/prometheus/rules.yml: a header, then the groups of the PrometheusRule."""
    body = yaml.dump({"groups": rule_groups(path)}, Dumper=_RulesDumper, sort_keys=False, width=120,
                     allow_unicode=True)
    return GENERATED_HEADER + body


def recorded_names(groups: list[dict[str, Any]]) -> set[str]:
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# ---------------------------------------------------------------- the dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of ``dashboard``, those inside (collapsed) rows included; rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every target of every panel."""
    return [(panel.get("title", "?"), target["expr"]) for panel in panels(dashboard)
            for target in panel.get("targets", []) if target.get("expr")]


def substitute(expression: str, values: dict[str, str] | None = None) -> str:
    """``expression`` with Grafana's ``$name``, ``${name}`` and ``[[name]]`` replaced by ``values``."""
    values = TEMPLATE_VALUES if values is None else values

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"no value for template variable {name!r} in {expression!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", replace, expression)


def metric_names(expression: str) -> set[str]:
    """The metric names (and recording-rule names) an instant PromQL expression selects.

    A small lexer, enough for the expressions of this project: strings, label matchers, range and
    subquery brackets and the label lists of ``by``/``on``/… are dropped; what is left that looks
    like a name, is no keyword and is not called like a function is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        if re.fullmatch(r"\d", name[:1]):
            continue
        names.add(name)
    return names


# ---------------------------------------------------------------- a live Prometheus


def exported_names(metrics_text: str) -> set[str]:
    """Names of the samples in a ``/metrics`` page (``x_bucket``, ``x_total``, … as they are stored)."""
    names = set()
    for line in metrics_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def local_config(targets: dict[str, list[str]], rules: Path, interval: str = "1s",
                 config: Path = CONFIG) -> dict[str, Any]:
    """The shipped ``prometheus.yml`` with its scrape targets replaced (job name → targets), every
    scrape and evaluation interval set to ``interval``, and ``rule_files`` set to ``[rules]``."""
    loaded: dict[str, Any] = yaml.safe_load(config.read_text())
    loaded.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval,
                                           scrape_timeout=interval)
    loaded["rule_files"] = [str(rules)]
    jobs = {job["job_name"]: job for job in loaded["scrape_configs"]}
    if set(targets) - set(jobs):
        raise KeyError(f"no scrape job(s) {sorted(set(targets) - set(jobs))} in {config}")
    for name, job in jobs.items():
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        job["static_configs"] = [{"targets": targets.get(name, [])}]
    return loaded


class PrometheusError(RuntimeError):
    pass


class PrometheusProcess:
    """A real ``prometheus`` on a free loopback port, with its own temporary TSDB; :meth:`close` ends it."""

    def __init__(self, config: dict[str, Any], binary: str = "prometheus") -> None:
        executable = shutil.which(binary)
        if executable is None:
            raise FileNotFoundError(f"{binary} is not on PATH (make system-packages installs it)")
        self.workdir = Path(tempfile.mkdtemp(prefix="layermask-prometheus-"))
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [executable, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
             "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, bound: float = 60.0) -> None:
        deadline = time.monotonic() + bound
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus was not ready within {bound:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a GET of ``/api/v1/<path>``; :class:`PrometheusError` on an API error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
            raise PrometheusError(f"{path} {params}: HTTP {error.code}: {body.get('error')}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``expression`` evaluates to now."""
        data = self.api("query", query=expression)
        if data["resultType"] == "vector":
            result: list[dict[str, Any]] = data["result"]
            return result
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PrometheusError(f"{expression}: a {data['resultType']}, not an instant vector")

    def alert_states(self) -> dict[str, str]:
        """Active alerts: name → state (``pending`` or ``firing``)."""
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def target_health(self) -> dict[str, str]:
        """Scrape job → health of its (single) target: ``up``, ``down`` or ``unknown``."""
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def main() -> None:
    LOCAL_RULES.write_text(render_rules())
    print(f"wrote {LOCAL_RULES.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
