"""``layermask.v1.ExplainService``: validate, translate, delegate to the backend, report.

Compute runs in a thread pool; the event loop only admits, waits and streams. A client's deadline
or cancellation is checked between batches, so the compute stops within one batch. Each error of
:mod:`layermask_service.errors` has its status code; any other exception is a bug, answered with
``INTERNAL`` and an incident id that the log holds with the traceback. A repeated explanation
that the result cache holds (:mod:`layermask_service.result_cache`) is answered from it at once,
without waiting for a compute slot.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from layermask_service.admission import Admission, QueueFull
from layermask_service.backend import Backend
from layermask_service.errors import BackendUnavailable, InvalidArgument, ModelNotFound, report_internal_error
from layermask_service.methods import check_occlusion_rows
from layermask_service.metrics import Metrics
from layermask_service.proto import explain_pb2 as pb
from layermask_service.proto import explain_pb2_grpc as pb_grpc
from layermask_service.registration import Undecodable
from layermask_service.result_cache import ResultCache, cache_key
from layermask_service.settings import Settings
from layermask_service.translate import (
    MASKING_ENUMS,
    MASKING_NAMES,
    CheckedExplainRequest,
    check_explain_request,
    class_scores,
    explain_response,
    image_from,
    masking_name,
    packed_mask,
    segmentation_from,
)

T = TypeVar("T")
log = logging.getLogger("layermask.server")


class Stopped(Exception):
    """The compute noticed, between batches, that its caller is gone or out of time."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.code = code


class _CallGuard:
    """Shared between the event loop and a compute thread: has the call been cancelled or timed out?"""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.monotonic() + remaining
        self.cancelled = threading.Event()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Stopped(grpc.StatusCode.CANCELLED)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Stopped(grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class _ExplainCall:
    """An ``ExplainRequest`` checked, with its result-cache key (``None``: not cached) and the cached
    response, if the cache holds it."""

    checked: CheckedExplainRequest
    key: bytes | None = None
    cached: pb.ExplainResponse | None = None


def _uncached(call: _ExplainCall) -> bool:
    """Whether an explanation needs a compute slot: not when the cache answers it."""
    return call.cached is None


class ExplainServicer(pb_grpc.ExplainServiceServicer):
    def __init__(self, backend: Backend, settings: Settings, metrics: Metrics, executor: Executor) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.admission = Admission(settings.max_concurrent, settings.max_queue, metrics)
        self.cache = ResultCache.of_mib(settings.cache_mib, metrics)

    # ------------------------------------------------------------------ RPCs
    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        if isinstance(request, Undecodable):
            return await self._refuse("Explain", request, context)

        async def work(guard: _CallGuard, call: _ExplainCall) -> pb.ExplainResponse:
            return call.cached if call.cached is not None else await self._explain(call, request.image, guard, None)

        return await self._handle("Explain", request.model, request.masking, context, work,
                                  check=lambda: self._check_explain(request), admit=_uncached)

    async def ExplainStream(self, request: pb.ExplainRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExplainEvent]:
        if isinstance(request, Undecodable):
            await self._refuse("ExplainStream", request, context)
        events: asyncio.Queue[pb.ExplainEvent] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, pb.ExplainEvent(progress=pb.Progress(done=done, total=total)))

        async def work(guard: _CallGuard, call: _ExplainCall) -> pb.ExplainResponse:
            if call.cached is not None:
                return call.cached
            return await self._explain(call, request.image, guard, progress)

        task = asyncio.ensure_future(self._handle("ExplainStream", request.model, request.masking, context, work,
                                                  check=lambda: self._check_explain(request), admit=_uncached))
        try:
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield pb.ExplainEvent(result=task.result())
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        if isinstance(request, Undecodable):
            return await self._refuse("Predict", request, context)
        model = request.model or self.backend.default_model

        def check() -> Callable[[], pb.PredictResponse]:
            """Every field but the image, before the call queues; returns the compute."""
            self._require_loaded()
            if not request.image:
                raise InvalidArgument("image: image is empty")
            masking = masking_name(request.masking)
            top_k = request.top_k if request.HasField("top_k") else 5
            visibility = request.WhichOneof("visibility")
            input_size = self.backend.model(model).input_size
            mask = packed_mask(request.mask, input_size) if visibility == "mask" else None
            keep = ((segmentation_from(request.segment_keep.segmentation, "segment_keep.segmentation"),
                     list(request.segment_keep.keep)) if visibility == "segment_keep" else None)

            def run() -> pb.PredictResponse:
                scores = self.backend.predict(model, image_from(request.image), masking, mask, keep, top_k)
                return pb.PredictResponse(model=model, predictions=class_scores(scores))

            return run

        async def work(guard: _CallGuard, run: Callable[[], pb.PredictResponse]) -> pb.PredictResponse:
            return await self._compute(guard, run)

        return await self._handle("Predict", request.model, request.masking, context, work, check=check)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        if isinstance(request, Undecodable):
            return await self._refuse("ListModels", request, context)

        async def work(guard: _CallGuard, checked: None) -> pb.ListModelsResponse:
            self._require_loaded()
            strategies = [MASKING_ENUMS[s] for s in self.backend.strategies()]
            return pb.ListModelsResponse(models=[
                pb.ModelInfo(name=name, input_height=m.input_size[0], input_width=m.input_size[1],
                             num_classes=m.num_classes, strategies=strategies,
                             is_default=name == self.backend.default_model)
                for name, m in self.backend.models.items()])

        return await self._handle("ListModels", "", None, context, work, admit=False)

    # ---------------------------------------------------------------- common
    async def _refuse(self, rpc: str, request: Undecodable, context: grpc.aio.ServicerContext) -> Any:
        """Answer request bytes that did not parse (see :mod:`layermask_service.registration`) with
        ``INVALID_ARGUMENT``."""
        async def work(guard: _CallGuard, checked: None) -> Any:
            raise InvalidArgument(str(request))

        return await self._handle(rpc, "", None, context, work, admit=False)

    def _require_loaded(self) -> None:
        if not self.backend.loaded.is_set():
            raise BackendUnavailable(f"{self.backend.waiting_for}; retry when health reports SERVING")

    def _check_explain(self, request: pb.ExplainRequest) -> _ExplainCall:
        self._require_loaded()
        checked = check_explain_request(request, self.backend.default_model, self.settings.max_samples)
        model = self.backend.model(checked.model)  # ModelNotFound before the call queues
        check_occlusion_rows(checked.options, model.input_size, self.settings.max_samples)
        digest = self.backend.digests.get(checked.model)
        if not self.cache.enabled or not request.HasField("seed") or digest is None:
            return _ExplainCall(checked)
        key = cache_key(checked.model, digest, request.image, checked.options, checked.heatmap_format)
        cached = self.cache.get(key)
        return _ExplainCall(checked, key, None if cached is None else pb.ExplainResponse.FromString(cached))

    async def _explain(self, call: _ExplainCall, image: bytes, guard: _CallGuard,
                       progress: Callable[[int, int], None] | None) -> pb.ExplainResponse:
        checked = call.checked

        def checked_progress(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)
            guard.check()

        def run() -> pb.ExplainResponse:  # decoding and encoding stay off the event loop too
            started = time.perf_counter()
            job = checked.with_image(image)
            decode_seconds = time.perf_counter() - started
            self.metrics.stage.labels("decode").observe(decode_seconds)
            explanation = self.backend.explain(job, checked_progress)
            response = explain_response(explanation, job.heatmap_format, decode_seconds)
            if response.ByteSize() > self.settings.max_message_bytes:
                # Heatmaps of many labels outgrow the message limit; gRPC would fail the send itself.
                raise InvalidArgument(f"labels, top_labels, heatmap_format: the response would be "
                                      f"{response.ByteSize()} bytes, over this server's limit of "
                                      f"{self.settings.max_message_bytes}; ask for fewer labels, or heatmaps in a "
                                      "smaller format, or none")
            if call.key is not None:
                self.cache.put(call.key, response.SerializeToString())
            return response

        return await self._compute(guard, run)

    async def _compute(self, guard: _CallGuard, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the pool; if this call is cancelled, stop the compute and wait for it to end."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            guard.cancelled.set()
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # the compute's Stopped, now of no one's interest: retrieved, so not logged
            raise

    async def _handle(self, rpc: str, model: str, masking: int | None, context: grpc.aio.ServicerContext,
                      work: Callable[[_CallGuard, Any], Any], admit: bool | Callable[[Any], bool] = True,
                      check: Callable[[], Any] | None = None) -> Any:
        """Run ``check`` (the request's fields, off the event loop), then ``work`` with its result, in a
        compute slot when ``admit`` (or ``admit(result)``) is true; map every outcome to a status and record it.

        The check runs before admission: a bad request is refused at once, not queued behind good ones
        or turned away as RESOURCE_EXHAUSTED, which a client would retry.
        """
        started = time.perf_counter()
        model_label = model or self.backend.default_model
        masking_label = "none" if masking is None else MASKING_NAMES.get(masking, "unknown")
        code, message = grpc.StatusCode.OK, ""
        guard = _CallGuard(context)
        try:
            checked = None if check is None else await asyncio.get_running_loop().run_in_executor(None, check)
            if admit(checked) if callable(admit) else admit:
                async with self.admission.slot():
                    return await work(guard, checked)
            return await work(guard, checked)
        except InvalidArgument as error:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(error)
        except ModelNotFound as error:
            code, message = grpc.StatusCode.NOT_FOUND, str(error.args[0])
        except QueueFull as error:
            code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
        except BackendUnavailable as error:
            code, message = grpc.StatusCode.UNAVAILABLE, str(error)
        except Stopped as error:
            code, message = error.code, "the call ended before the explanation finished; compute stopped"
        except asyncio.CancelledError:
            # gRPC cancels the handler both when the client cancels and when its deadline passes.
            expired = guard.deadline is not None and time.monotonic() >= guard.deadline
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception:  # a bug, here or in the backend (BackendFailed)
            code, message = grpc.StatusCode.INTERNAL, report_internal_error(log, f"serving {rpc}")
        finally:
            self.metrics.requests.labels(rpc, code.name).inc()
            self.metrics.latency.labels(model_label, masking_label, rpc, code.name).observe(
                time.perf_counter() - started)
        await context.abort(code, message)
