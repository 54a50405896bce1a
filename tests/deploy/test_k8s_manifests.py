"""The Kubernetes manifests (deploy/k8s): each overlay renders with kustomize, validates against the
Kubernetes and Prometheus Operator schemas, passes checkov, and carries the deployment's requirements.

The tools come from ``make deploy-tools`` (tests/helpers/deploy_tools.py).

(Over 300 lines: the schema, checkov and requirement checks share one cached rendering per overlay
and one checkov run; split, each module would render and scan again.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from layermask_service.settings import Settings
from tests.helpers.deploy_tools import REPO_ROOT, latest_kubernetes_schema_version, run_deploy_tool

pytestmark = pytest.mark.deploy

K8S = REPO_ROOT / "deploy" / "k8s"
CHECKOV_CONFIG = K8S / ".checkov.yaml"
OVERLAYS = ("cpu", "gpu", "cpu-inflight", "gpu-inflight", "cpu-tls")
TLS_OVERLAYS = ("cpu-tls",)
GPU_OVERLAYS = ("gpu", "gpu-inflight")
INFLIGHT_OVERLAYS = ("cpu-inflight", "gpu-inflight")
MONITORING_V1 = "monitoring.coreos.com/v1"

# The only apiVersion/kind pairs the overlays may render.
ALLOWED_KINDS = frozenset({
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    (MONITORING_V1, "ServiceMonitor"),
    (MONITORING_V1, "PrometheusRule"),
})

IMAGE = "layermask:0.1.0"
HEALTHCHECK = ["python", "-m", "layermask_service.healthcheck"]  # with TLS: its settings from the ConfigMap
PROBE_TIMING = {"periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold", "initialDelaySeconds"}
TLS_SETTINGS = {
    "LAYERMASK_TLS_CERT_FILE": "/etc/layermask/tls/tls.crt",
    "LAYERMASK_TLS_KEY_FILE": "/etc/layermask/tls/tls.key",
    "LAYERMASK_AUTH_TOKEN_FILE": "/etc/layermask/tls/tokens",
    "LAYERMASK_HEALTHCHECK_TLS_CA_FILE": "/etc/layermask/tls/ca.crt",
    "LAYERMASK_HEALTHCHECK_TLS_SERVER_NAME": "layermask.layermask.svc",
}
TLS_SECRET = "layermask-tls"
TORCHSERVE_SERVICE = "layermask-torchserve"
TORCHSERVE_MANAGEMENT_PORTS = {8080, 8081, 7071}  # REST, management, gRPC management: 127.0.0.1 only
TORCHSERVE_PING = ["python", "-m", "layermask_service.healthcheck", "--torchserve-ping", "http://127.0.0.1:8080/ping"]
TORCHSERVE_COMMAND = ["layermask", "torchserve", "--model-store", "/models", "--public-host", "0.0.0.0",
                      "--models", "efficientnet_lite0"]
SETTINGS = {
    "LAYERMASK_HOST": "0.0.0.0",
    "LAYERMASK_PORT": "50051",
    "LAYERMASK_METRICS_HOST": "0.0.0.0",
    "LAYERMASK_METRICS_PORT": "9464",
    "LAYERMASK_MODELS": "efficientnet_lite0",
    "LAYERMASK_MAX_CONCURRENT": "1",
    "LAYERMASK_MAX_QUEUE": "4",
    "LAYERMASK_CACHE_MIB": "64",
    "LAYERMASK_GRACE_SECONDS": "30",
}
PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
CLIENT_PEER = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"layermask.io/client": "true"}}}
SERVICE_PODS_PEER = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "layermask",
                                                     "app.kubernetes.io/component": "service"}}}
ADAPTER_RULE = {
    "seriesQuery": 'layermask_inflight_requests{namespace!="",pod!=""}',
    "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
    "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
}

Obj = dict[str, Any]


@dataclass(frozen=True)
class Render:
    """``kubectl kustomize`` of one overlay: its text and its objects."""

    overlay: str
    text: str
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str) -> Obj:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def configmap(self, prefix: str) -> Obj:
        """The generated ConfigMap ``prefix-<hash>``."""
        found = [obj for obj in self.of_kind("ConfigMap") if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}",
                                                                           obj["metadata"]["name"])]
        assert len(found) == 1, f"{self.overlay}: expected one generated ConfigMap {prefix}-<hash>"
        return found[0]

    def containers(self) -> Iterator[tuple[Obj, Obj, Obj]]:
        """(Deployment, pod spec, container) for every container of every Deployment."""
        for deployment in self.of_kind("Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                yield deployment, pod, container


@functools.cache
def render(overlay: str) -> Render:
    result = run_deploy_tool("kubectl", "kustomize", K8S / "overlays" / overlay, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize deploy/k8s/overlays/{overlay} failed:\n{result.stderr}", pytrace=False)
    return Render(overlay, result.stdout, [obj for obj in yaml.safe_load_all(result.stdout) if obj])


def component(obj: Obj) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def pod_template(render_: Render, component_: str) -> Obj:
    deployments = [d for d in render_.of_kind("Deployment") if component(d) == component_]
    assert len(deployments) == 1, f"{render_.overlay}: expected one {component_} Deployment"
    return deployments[0]["spec"]["template"]


def container_named(render_: Render, component_: str, name: str) -> Obj:
    containers = [c for c in pod_template(render_, component_)["spec"]["containers"] if c["name"] == name]
    assert len(containers) == 1, f"{render_.overlay}: no container {name} in the {component_} Deployment"
    return containers[0]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a matchLabels-only label selector matches ``labels``."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are expected: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


# --- rendering and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_in_its_namespace(overlay: str) -> None:
    rendered = render(overlay)
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects if obj["kind"] != "ConfigMap"}
    expected = {("Namespace", "layermask"), ("ServiceAccount", "layermask"), ("Deployment", "layermask"),
                ("Service", "layermask"), ("HorizontalPodAutoscaler", "layermask"),
                ("PodDisruptionBudget", "layermask"), ("NetworkPolicy", "layermask-default-deny-ingress"),
                ("NetworkPolicy", "layermask-service-ingress"), ("ServiceMonitor", "layermask"),
                ("PrometheusRule", "layermask")}
    if overlay in GPU_OVERLAYS:
        expected |= {(kind, TORCHSERVE_SERVICE) for kind in ("ServiceAccount", "Deployment", "Service",
                                                             "PodDisruptionBudget", "ServiceMonitor")}
        expected.add(("NetworkPolicy", "layermask-torchserve-ingress"))
    assert names == expected
    rendered.configmap("layermask")
    for obj in rendered.objects:
        if obj["kind"] == "Namespace":
            continue
        adapter_rules = obj["metadata"]["name"] == "layermask-prometheus-adapter-rules"
        assert obj["metadata"].get("namespace") == ("monitoring" if adapter_rules else "layermask"), obj["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kinds_are_allowed(overlay: str) -> None:
    kinds = {(obj["apiVersion"], obj["kind"]) for obj in render(overlay).objects}
    assert kinds <= ALLOWED_KINDS, f"not in ALLOWED_KINDS: {sorted(kinds - ALLOWED_KINDS)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_built_in_objects_validate_strictly(overlay: str, tmp_path: Path) -> None:
    built_in = [obj for obj in render(overlay).objects if not obj["apiVersion"].startswith("monitoring.coreos.com/")]
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(built_in))
    version = latest_kubernetes_schema_version()
    result = run_deploy_tool("kubernetes-validate", "--strict", "-k", version, manifest)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A kind without a schema is only a warning: fail on it too, and count what passed.
    assert not re.search(r"^(WARN|ERROR)", output, re.MULTILINE), output
    assert output.count("passed for resource") == len(built_in), output


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_operator_objects_match_typed_models(overlay: str) -> None:
    rendered = render(overlay)
    script = REPO_ROOT / "tests" / "deploy" / "check_prometheus_operator.py"
    result = run_deploy_tool("python", script, stdin=rendered.text)
    assert result.returncode == 0, result.stderr
    expected = {f"{obj['kind']} {obj['metadata']['name']}" for obj in rendered.objects
                if obj["apiVersion"].startswith("monitoring.coreos.com/")}
    assert set(result.stdout.splitlines()) == expected, result.stdout
    assert len(expected) == (3 if overlay in GPU_OVERLAYS else 2)


# --- checkov -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> Obj:
    """One checkov run over every overlay's rendering (``/<overlay>.yaml`` in the report)."""
    directory = tmp_path_factory.mktemp("rendered")
    for overlay in OVERLAYS:
        (directory / f"{overlay}.yaml").write_text(render(overlay).text)
    result = run_deploy_tool("checkov", "--config-file", CHECKOV_CONFIG, "--skip-download", "--framework",
                             "kubernetes", "--compact", "--output", "json", "--directory", directory, timeout=300)
    assert result.returncode in (0, 1), result.stderr  # 1: failed checks, reported below
    report: Obj = json.loads(result.stdout)
    return report


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_passes(checkov_report: Obj, overlay: str) -> None:
    results = checkov_report["results"]
    assert not results["parsing_errors"], results["parsing_errors"]
    failed = [f"{check['check_id']} {check['check_name']}: {check['resource']}"
              for check in results["failed_checks"] if check["file_path"] == f"/{overlay}.yaml"]
    assert not failed, "\n".join(failed)
    passed = {check["check_id"] for check in results["passed_checks"] if check["file_path"] == f"/{overlay}.yaml"}
    # It did look at the pods: the security context and resource checks ran and passed.
    assert {"CKV_K8S_22", "CKV_K8S_20", "CKV_K8S_37", "CKV_K8S_31", "CKV_K8S_11", "CKV_K8S_13"} <= passed


def test_checkov_skips_are_justified() -> None:
    """Each check skipped in deploy/k8s/.checkov.yaml has its reason on its line; manifest skips carry one."""
    skips = [line for line in CHECKOV_CONFIG.read_text().splitlines() if re.match(r"\s*-\s*CKV", line)]
    assert yaml.safe_load(CHECKOV_CONFIG.read_text()).get("skip-check", []) == [s.split()[1] for s in skips]
    for line in skips:
        assert re.search(r"#\s*\S.{20,}", line), f"no reason given for: {line.strip()}"
    for path in K8S.rglob("*.yaml"):
        for annotation in re.findall(r"checkov\.io/skip\d+:\s*(.*)", path.read_text()):
            assert re.fullmatch(r"CKV2?_K8S_\d+=\S.{20,}", annotation.strip()), f"{path}: {annotation}"


# --- the deployment's requirements -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_come_from_the_configmap(overlay: str) -> None:
    rendered = render(overlay)
    configmap = rendered.configmap("layermask")
    expected = dict(SETTINGS)
    if overlay in GPU_OVERLAYS:
        expected |= {"LAYERMASK_BACKEND": "torchserve",
                     "LAYERMASK_TORCHSERVE_TARGET": f"dns:///{TORCHSERVE_SERVICE}:7070"}
    else:
        expected["LAYERMASK_BACKEND"] = "embedded"
    if overlay in TLS_OVERLAYS:
        expected |= TLS_SETTINGS
    assert configmap["data"] == expected
    known = {f"LAYERMASK_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    for key in configmap["data"]:  # a misspelt name would be silently ignored by the server
        assert key in known or key.startswith("LAYERMASK_HEALTHCHECK_TLS_"), key
    service = container_named(rendered, "service", "layermask")
    assert service["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
    assert service["command"] == ["layermask", "serve"]
    assert {(p["name"], p["containerPort"]) for p in service["ports"]} == {("grpc", 50051), ("metrics", 9464)}
    ports = {(p["name"], p["port"]) for p in rendered.one("Service", "layermask")["spec"]["ports"]}
    assert ports == {("grpc", 50051), ("metrics", 9464)}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_torchserve_service_is_headless_and_is_the_target(overlay: str) -> None:
    rendered = render(overlay)
    service = rendered.one("Service", TORCHSERVE_SERVICE)
    # A ClusterIP would pin every gRPC connection, and so every masked batch, to one pod.
    assert service["spec"].get("clusterIP") == "None"
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", 7070), ("metrics", 8082)}
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_template(rendered, "torchserve")["metadata"]
                   ["labels"])
    target = rendered.configmap("layermask")["data"]["LAYERMASK_TORCHSERVE_TARGET"]
    match = re.fullmatch(r"dns:///([a-z0-9.-]+):(\d+)", target)
    assert match, f"LAYERMASK_TORCHSERVE_TARGET={target} is not dns:///HOST:PORT"
    assert match[1].split(".")[0] == TORCHSERVE_SERVICE and match[2] == "7070"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_torchserve_runs_on_a_gpu_node(overlay: str) -> None:
    rendered = render(overlay)
    pod = pod_template(rendered, "torchserve")["spec"]
    torchserve = container_named(rendered, "torchserve", "torchserve")
    assert torchserve["command"] == TORCHSERVE_COMMAND
    assert {(p["name"], p["containerPort"]) for p in torchserve["ports"]} == {("grpc", 7070), ("metrics", 8082)}
    assert str(torchserve["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(torchserve["resources"].get("requests", {}).get("nvidia.com/gpu", "1")) == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert any(key.startswith("nvidia.com/") for key in pod["nodeSelector"])
    mounts = {m["mountPath"]: m["name"] for m in torchserve["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/models"]] and "emptyDir" in volumes[mounts["/tmp"]]
    # The service itself stays on CPU nodes.
    service_pod = pod_template(rendered, "service")["spec"]
    assert "tolerations" not in service_pod and "nodeSelector" not in service_pod
    assert all("nvidia.com/gpu" not in c["resources"].get(k, {}) for c in service_pod["containers"]
               for k in ("requests", "limits"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_sized(overlay: str) -> None:
    containers = list(render(overlay).containers())
    assert len(containers) == (2 if overlay in GPU_OVERLAYS else 1)
    for deployment, pod, container in containers:
        where = f"{overlay}: {deployment['metadata']['name']}/{container['name']}"
        pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
        assert security.get("readOnlyRootFilesystem") is True, where
        assert security.get("allowPrivilegeEscalation") is False, where
        assert security.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not security.get("capabilities", {}).get("add"), where
        assert not security.get("privileged", False), where
        for key, value in (("runAsNonRoot", True), ("runAsUser", 10001), ("runAsGroup", 10001)):
            assert security.get(key, pod_security.get(key)) == value, f"{where}: {key}"
        assert pod_security.get("fsGroup") == 10001, where
        for context in (pod_security, security):
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container.get("resources", {}).get(kind, {})), f"{where}: {kind}"
        assert container["image"] == IMAGE, where
        # Writable: /tmp, on an emptyDir.
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], where
        assert pod.get("automountServiceAccountToken") is False, where
        account = render(overlay).one("ServiceAccount", pod["serviceAccountName"])
        assert account.get("automountServiceAccountToken") is False, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_probes_and_drain(overlay: str) -> None:
    rendered = render(overlay)
    template = pod_template(rendered, "service")
    container = container_named(rendered, "service", "layermask")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if overlay in TLS_OVERLAYS:  # native gRPC probes speak plaintext only
            assert set(container[probe]) - PROBE_TIMING == {"exec"}, probe
            assert container[probe]["exec"]["command"] == HEALTHCHECK, probe
            continue
        assert container[probe]["grpc"]["port"] == 50051, probe
        assert container[probe]["grpc"].get("service", "") == "", probe  # the server's overall health
    startup = container["startupProbe"]
    assert startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10) >= 300
    grace = float(rendered.configmap("layermask")["data"]["LAYERMASK_GRACE_SECONDS"])
    pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert template["spec"]["terminationGracePeriodSeconds"] > grace + pause


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_torchserve_probes_ping_it(overlay: str) -> None:
    container = container_named(render(overlay), "torchserve", "torchserve")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["exec"]["command"] == TORCHSERVE_PING, probe
    startup = container["startupProbe"]
    assert startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10) >= 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_secret_is_mounted_read_only(overlay: str) -> None:
    rendered = render(overlay)
    pod = pod_template(rendered, "service")["spec"]
    mounts = [m for m in container_named(rendered, "service", "layermask")["volumeMounts"]
              if m["mountPath"] == "/etc/layermask/tls"]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    assert volume["secret"]["secretName"] == TLS_SECRET
    # Optional until TLS is on (components/tls): then a pod without its certificate must not start.
    assert volume["secret"].get("optional") is (overlay not in TLS_OVERLAYS)
    if overlay in TLS_OVERLAYS:
        paths = [v for k, v in rendered.configmap("layermask")["data"].items() if k.endswith("_FILE")]
        assert paths and all(path.startswith(mounts[0]["mountPath"] + "/") for path in paths)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_open_only_the_intended_ports(overlay: str) -> None:
    rendered = render(overlay)
    policies = rendered.of_kind("NetworkPolicy")
    everything = {"matchLabels": {"app.kubernetes.io/part-of": "layermask"}}
    deny = [p for p in policies if p["spec"]["podSelector"] == everything
            and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")]
    assert len(deny) == 1, "no default-deny ingress policy over every layermask pod"
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deny[0]["spec"]["podSelector"], labels), deployment["metadata"]["name"]
    opened: dict[tuple[str | None, int], list[Obj]] = {}
    for policy in policies:
        selected = policy["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        for rule in policy["spec"].get("ingress", []):
            # A rule without ports opens every port (management included); one without peers, to everyone.
            assert rule.get("ports") and rule.get("from"), f"{policy['metadata']['name']}: {rule}"
            for port in rule["ports"]:
                assert isinstance(port["port"], int) and "endPort" not in port, port
                assert port["port"] not in TORCHSERVE_MANAGEMENT_PORTS, f"{policy['metadata']['name']} opens {port}"
                opened.setdefault((selected, port["port"]), []).extend(rule["from"])
    expected = {("service", 50051): [CLIENT_PEER], ("service", 9464): [PROMETHEUS_PEER]}
    if overlay in GPU_OVERLAYS:
        expected |= {("torchserve", 7070): [SERVICE_PODS_PEER], ("torchserve", 8082): [PROMETHEUS_PEER]}
    assert opened == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling(overlay: str) -> None:
    rendered = render(overlay)
    hpas = rendered.of_kind("HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"] for h in hpas] == [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                            "name": "layermask"}]
    metrics = hpas[0]["spec"]["metrics"]
    if overlay in INFLIGHT_OVERLAYS:
        assert [m["type"] for m in metrics] == ["Pods"]
        assert metrics[0]["pods"]["metric"]["name"] == "layermask_inflight_requests"
        assert metrics[0]["pods"]["target"]["type"] == "AverageValue"
        adapter = rendered.one("ConfigMap", "layermask-prometheus-adapter-rules")
        rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
        assert len(rules) == 1 and rules[0].items() >= ADAPTER_RULE.items(), rules
    else:
        assert [(m["type"], m["resource"]["name"]) for m in metrics] == [("Resource", "cpu")]
        assert not [c for c in rendered.of_kind("ConfigMap") if "adapter" in c["metadata"]["name"]]
    assert 1 < hpas[0]["spec"]["minReplicas"] < hpas[0]["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_deployment_has_a_disruption_budget(overlay: str) -> None:
    rendered = render(overlay)
    budgets = rendered.of_kind("PodDisruptionBudget")
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, deployment["metadata"]["name"]
    assert len(budgets) == len(rendered.of_kind("Deployment"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labels_and_selectors(overlay: str) -> None:
    rendered = render(overlay)
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "layermask", obj["metadata"]
        assert labels.get("app.kubernetes.io/part-of") == "layermask", obj["metadata"]
    for kind in ("Deployment", "Service", "ServiceMonitor"):
        for obj in rendered.of_kind(kind):
            assert component(obj) in {"service", "torchserve"}, obj["metadata"]
    for deployment in rendered.of_kind("Deployment"):
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert template_labels.get("app.kubernetes.io/component") == component(deployment)
        assert selects(deployment["spec"]["selector"], template_labels)
        services = [s for s in rendered.of_kind("Service")
                    if selects({"matchLabels": s["spec"]["selector"]}, template_labels)]
        assert [component(s) for s in services] == [component(deployment)], deployment["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_each_metrics_port(overlay: str) -> None:
    rendered = render(overlay)
    jobs = {"service": "layermask", "torchserve": "torchserve"}  # the jobs the PrometheusRule's alerts expect
    monitors = rendered.of_kind("ServiceMonitor")
    assert sorted(component(m) or "" for m in monitors) == sorted(component(s) or ""
                                                                  for s in rendered.of_kind("Service"))
    for monitor in monitors:
        services = [s for s in rendered.of_kind("Service") if selects(monitor["spec"]["selector"],
                                                                      s["metadata"]["labels"])]
        assert len(services) == 1, monitor["metadata"]["name"]
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
        assert "metrics" in {p["name"] for p in services[0]["spec"]["ports"]}
        relabel = {"action": "replace", "targetLabel": "job", "replacement": jobs[component(monitor) or ""]}
        assert relabel in monitor["spec"]["endpoints"][0].get("relabelings", []), monitor["metadata"]["name"]


def source_deployments(directory: str) -> list[Obj]:
    """The Deployments as written in ``deploy/k8s/<directory>``, before kustomize."""
    return [obj for path in sorted((K8S / directory).glob("*.yaml")) if path.name != "kustomization.yaml"
            for obj in yaml.safe_load_all(path.read_text()) if obj and obj.get("kind") == "Deployment"]


def test_overlays_set_the_image_in_one_place() -> None:
    """Every container names the image ``layermask``, which only the overlays' ``images:`` resolve."""
    deployments = [*source_deployments("base"), *source_deployments("overlays/gpu")]
    assert len(deployments) == 2
    for deployment in deployments:
        assert {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]} == {"layermask"}
    for overlay in ("cpu", "gpu"):
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert kustomization["images"] == [{"name": "layermask", "newName": "layermask", "newTag": "0.1.0"}]
