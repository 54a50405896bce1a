"""A real ExplainServer on loopback with ephemeral ports, in a thread of the test process."""

from __future__ import annotations

import io
import urllib.request
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


def png_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
