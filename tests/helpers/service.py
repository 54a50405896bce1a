"""A real ExplainServer on loopback with ephemeral ports, in a thread of the test process."""

from __future__ import annotations

import io
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from layermask_service.server import BackgroundServer
from layermask_service.settings import Settings

LOOPBACK = Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0)


class RunningServer(BackgroundServer):
    def __init__(self, settings: Settings | None = None, wait: bool = True) -> None:
        super().__init__(settings or LOOPBACK, wait_until_serving=wait)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``/metrics`` parsed by prometheus_client: sample (name, sorted labels) → value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}


    def perturbations(self, model: str = "efficientnet_lite0") -> float:
        """``layermask_perturbations_total`` for ``model``: masked rows computed so far."""
        return self.scrape().get(("layermask_perturbations_total", (("model", model),)), 0.0)

    def metric(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Callable[[], bool], bound: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; ``TimeoutError`` naming ``what`` after ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {bound:.0f} s for {what}")
        time.sleep(interval)


def wait_until_steady(read: Callable[[], float], still_for: float, bound: float, what: str) -> float:
    """Poll ``read`` until its value has not changed for ``still_for`` seconds, and return that value.

    For "the compute has stopped": a loaded machine may take a while to finish the batch in flight,
    so the wait is bounded by ``bound``, not fixed.
    """
    deadline = time.monotonic() + bound
    value, since = read(), time.monotonic()
    while time.monotonic() - since < still_for:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not settle within {bound:.0f} s (last value {value})")
        time.sleep(0.1)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def png_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
