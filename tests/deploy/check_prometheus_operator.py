"""Validate the Prometheus Operator objects of a rendered kustomization against typed models.

Run with the deployment-tools venv (``.venv-deploy/bin/python``, which has
``cloudcoil.models.prometheus_operator``), the YAML on stdin::

    kubectl kustomize deploy/k8s/overlays/gpu | .venv-deploy/bin/python tests/deploy/check_prometheus_operator.py

Every ``monitoring.coreos.com`` object must validate with unknown fields forbidden at every
level, and dump back to exactly what was read (nothing dropped or coerced). Other objects are
ignored. Prints ``KIND NAME`` for each object validated; exit status 1, with the errors on
stderr, when any fails (or has a kind without a model).
"""

from __future__ import annotations

import sys
from typing import Any

import pydantic
import yaml
from cloudcoil.models.prometheus_operator import v1
from cloudcoil.resources import Resource

GROUP = "monitoring.coreos.com/"
# (apiVersion, kind) → model, for each resource (ServiceMonitor, PrometheusRule, …) of monitoring.coreos.com/v1.
MODELS: dict[tuple[str, str], Any] = {
    (f"{GROUP}v1", name): cls for name, cls in vars(v1).items()
    if isinstance(cls, type) and issubclass(cls, Resource) and cls.__module__ == v1.__name__
}


def check(obj: dict[str, Any]) -> str | None:
    """``None`` when ``obj`` is valid, else why not."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    model = MODELS.get((str(api_version), str(kind)))
    if model is None:
        return f"no typed model for {api_version} {kind}"
    try:
        parsed = model.model_validate(obj, extra="forbid")
    except pydantic.ValidationError as error:
        return str(error)
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if dumped != obj:
        return f"does not round-trip through the model:\n  read   {obj}\n  dumped {dumped}"
    return None


def main() -> int:
    failed = False
    for obj in yaml.safe_load_all(sys.stdin):
        if not obj or not str(obj.get("apiVersion", "")).startswith(GROUP):
            continue
        name = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        error = check(obj)
        if error is None:
            print(name)
        else:
            failed = True
            print(f"{name}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
