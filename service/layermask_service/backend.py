"""Backends: where the masked forward passes of explanations and predictions run.

:class:`Backend` does the work common to all backends in this process (decoding, segmentation,
sampling, fitting, through the core library); a backend supplies the models and a
:data:`~layermask.explanation.scoring.Scorer` for the masked batches. :class:`EmbeddedBackend` holds the
models and runs the batches in-process; :class:`~layermask_service.torchserve.backend.TorchServeBackend`
sends them to TorchServe.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from layermask.errors import InvalidOptionError
from layermask.explanation.lime import default_batch_size, finish_explanation, plan_explanation, segment_crop
from layermask.explanation.options import ExplainOptions
from layermask.explanation.result import ClassScore, Explanation
from layermask.explanation.scoring import LocalScorer, Scorer, ScoringJob
from layermask.masking.strategies import MASKING_STRATEGIES, cached_masker
from layermask.models.registry import LoadedModel, load_model
from layermask.onnx.export import export_onnx
from layermask.onnx.runtime import load_onnx_model
from layermask_service.errors import InvalidArgument, ModelNotFound
from layermask_service.metrics import Metrics
from layermask_service.result_cache import weights_digest
from layermask_service.settings import Settings
from layermask_service.translate import ExplainJob, RequestedSegmentation, option_error

Progress = Callable[[int, int], None]


class Backend:
    """Explanations and predictions on the configured models, computed in the caller's thread.

    Subclasses fill :attr:`models` in :meth:`load` and may score masked batches elsewhere
    (:meth:`scorer`).
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        # model name -> the SHA-256 of its weights (result_cache.weights_digest), set where it is loaded;
        # a model without one is not cached
        self.digests: dict[str, str] = {}
        self.loaded = threading.Event()
        self.waiting_for = "models are still loading"  # why calls cannot be served before `loaded`

    @property
    def default_model(self) -> str:
        return self.settings.models[0]

    def load(self) -> None:
        """Make every configured model ready (slow; call off the event loop)."""
        raise NotImplementedError

    def available(self) -> bool:
        """Whether calls can be served now; polled for the health status once loaded."""
        return self.loaded.is_set()

    def scorer(self, model: LoadedModel) -> Scorer:
        return LocalScorer(model, self.settings.batch_size or default_batch_size())

    def close(self) -> None:
        """Release what the backend holds."""

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {', '.join(self.models)}")
        return self.models[name]

    def strategies(self) -> tuple[str, ...]:
        return MASKING_STRATEGIES

    def explain(self, job: ExplainJob, progress: Progress | None = None) -> Explanation:
        """Explain ``job``: check its options against the model and image (``InvalidArgument``), then compute."""
        model = self.model(job.model)
        try:
            plan = plan_explanation(model, job.image, job.options, batch_size=self.settings.batch_size)
        except InvalidOptionError as error:
            raise job.request_error(error) from None
        done = 0

        def record(now: int, total: int) -> None:
            nonlocal done
            self.metrics.batch_size.observe(now - done)
            self.metrics.perturbations.labels(job.model).inc(now - done)
            done = now
            if progress is not None:
                progress(now, total)

        explanation = finish_explanation(plan, self.scorer(model), record)
        sampling = "adaptive" if job.options.adaptive_sampling else "fixed"
        self.metrics.samples_used.labels(explanation.method, sampling).observe(explanation.num_samples)
        for stage, seconds in explanation.timings.items():
            self.metrics.stage.labels("segment" if stage == "segmentation" else stage).observe(seconds)
        return explanation

    def predict(self, model_name: str, image: object, masking: str, mask: np.ndarray | None,
                segment_keep: tuple[RequestedSegmentation, list[bool]] | None, top_k: int) -> list[ClassScore]:
        model = self.model(model_name)
        if not 1 <= top_k <= model.num_classes:
            raise InvalidArgument(f"top_k: must be between 1 and {model.num_classes}, got {top_k}")
        crop = model.preprocessing.crop(image)  # type: ignore[arg-type]
        tensor = model.preprocessing.normalise(crop).unsqueeze(0)
        if segment_keep is not None:
            requested, keep = segment_keep
            size = (image.height, image.width)  # type: ignore[attr-defined]
            try:
                options = ExplainOptions(segmentation=requested.segmentation, segmentation_params=requested.params)
                segments = segment_crop(np.asarray(crop), size, model.preprocessing, options)
            except InvalidOptionError as error:
                raise option_error(error, requested) from None
            if len(keep) != int(segments.max()) + 1:
                raise InvalidArgument(f"segment_keep.keep: has {len(keep)} values for {int(segments.max()) + 1} "
                                      "segments")
            mask = np.asarray(keep, dtype=np.uint8)[segments]
        masks = np.ones((1, *model.input_size), dtype=np.uint8) if mask is None else mask[None].astype(np.uint8)
        probabilities = torch.from_numpy(self.scorer(model)(ScoringJob(tensor, masking, masks=masks))[0])
        self.metrics.batch_size.observe(1)
        top = probabilities.topk(top_k)
        return [ClassScore(int(i), model.class_names[int(i)], float(p))
                for p, i in zip(top.values.tolist(), top.indices.tolist())]


class EmbeddedBackend(Backend):
    """Models loaded in this process; their masked batches run here too."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self._export_dir: tempfile.TemporaryDirectory[str] | None = None

    def load(self) -> None:
        """Load every configured model, move it to the configured device and convert it for layer masking."""
        for name in self.settings.models:
            start = time.perf_counter()
            model = self._load_onnx(name) if self.settings.format == "onnx" else \
                load_model(name, self.settings.weights.get(name)).to(self.settings.device)
            self.digests[name] = weights_digest(model)
            cached_masker("layer", model)
            self.models[name] = model
            provider = getattr(model.masked_runtime, "provider", f"pytorch-{model.device.type}")
            self.metrics.model_load.labels(name, model.format, provider).set(time.perf_counter() - start)
        self.loaded.set()

    def _load_onnx(self, name: str) -> LoadedModel:
        """An exported ``.onnx`` file from ``weights``, or else the model exported now to a temporary file."""
        configured = self.settings.weights.get(name)
        if configured is not None and configured.endswith(".onnx"):
            return load_onnx_model(configured, self.settings.onnx_providers)
        if self._export_dir is None:
            self._export_dir = tempfile.TemporaryDirectory(prefix="layermask-onnx-")
        path = export_onnx(load_model(name, configured), Path(self._export_dir.name) / f"{name}.onnx")
        return load_onnx_model(path, self.settings.onnx_providers)
