"""Fixtures of the TorchServe tests: one archive and one real TorchServe on free loopback ports per session.

Every test in this folder needs a real TorchServe (or its Python worker), so all carry the
``torchserve`` marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from layermask_service.torchserve.archive import build_archive
from layermask_service.torchserve.process import TorchServeProcess
from tests.helpers.torchserve import ARCHIVE, MODEL

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.torchserve)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    build_archive(MODEL, store, settings=ARCHIVE)
    return store


@pytest.fixture(scope="session")
def torchserve(model_store: Path) -> Iterator[TorchServeProcess]:
    """TorchServe serving the archive of ``model_store``, stopped (its whole process group) at the end."""
    process = TorchServeProcess(model_store, [MODEL], free_ports=True)
    try:
        process.start()
        yield process
    finally:
        process.close()
