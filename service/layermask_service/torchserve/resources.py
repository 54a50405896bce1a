"""The TorchServe files shipped as package data, read with :mod:`importlib.resources`.

Nothing here depends on a source checkout: an installed wheel carries the handler, the
``config.properties`` that ``layermask serve --start-torchserve`` uses and the ``metrics.yaml``
that declares the handler's metrics. Callers copy them where TorchServe needs a file.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_PACKAGE = "layermask_service.torchserve"
HANDLER = "handler.py"
CONFIG = "config.properties"
METRICS = "metrics.yaml"


def read_resource(name: str) -> str:
    """The text of the shipped file ``name`` (one of :data:`HANDLER`, :data:`CONFIG`, :data:`METRICS`)."""
    return files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def copy_resource(name: str, directory: Path, as_name: str | None = None) -> Path:
    """Write the shipped file ``name`` into ``directory`` (as ``as_name``) and return its path."""
    target = directory / (as_name or name)
    target.write_text(read_resource(name), encoding="utf-8")
    return target
