"""Bounded concurrency with a bounded queue: past the queue, callers are turned away at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from layermask_service.metrics import Metrics


class QueueFull(Exception):
    """Every compute slot is busy and the queue is full."""


class Admission:
    def __init__(self, max_running: int, max_waiting: int, metrics: Metrics) -> None:
        self._slots = asyncio.Semaphore(max_running)
        self._max_waiting = max_waiting
        self._waiting = 0
        self._metrics = metrics

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a compute slot for the body; raises :class:`QueueFull` without waiting if none can be had."""
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise QueueFull(f"server busy: all compute slots are in use and {self._waiting} calls are queued")
        self._waiting += 1
        self._metrics.queue_depth.set(self._waiting)
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._metrics.queue_depth.set(self._waiting)
        self._metrics.inflight.inc()
        try:
            yield
        finally:
            self._metrics.inflight.dec()
            self._slots.release()
