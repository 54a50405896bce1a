"""The embedded backend: models held in-process, computing through the core library."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from layermask.explanation import ClassScore, Explanation
from layermask.lime import explain
from layermask.maskers import MASKING_STRATEGIES, cached_masker
from layermask.models import LoadedModel, load_model
from layermask.onnx_export import export_onnx
from layermask.onnx_runtime import load_onnx_model
from layermask.segmentation import segment
from layermask_service.metrics import Metrics
from layermask_service.settings import Settings
from layermask_service.translate import ExplainJob, InvalidArgument, SegmentationChoice, check_labels

Progress = Callable[[int, int], None]


class ModelNotFound(KeyError):
    """The request names a model this server has not loaded."""


class EmbeddedBackend:
    """Loads the configured models and runs explanations and predictions on them, in the caller's thread."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.loaded = threading.Event()
        self._export_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def default_model(self) -> str:
        return self.settings.models[0]

    def load(self) -> None:
        """Load every configured model and convert it for layer masking (slow; call off the event loop)."""
        for name in self.settings.models:
            start = time.perf_counter()
            model = self._load_onnx(name) if self.settings.format == "onnx" else \
                load_model(name, self.settings.weights.get(name))
            cached_masker("layer", model)
            self.models[name] = model
            provider = getattr(model.masked_runtime, "provider", "pytorch-cpu")
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

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {', '.join(self.models)}")
        return self.models[name]

    def strategies(self) -> tuple[str, ...]:
        return MASKING_STRATEGIES

    def _segmentation(self, model: LoadedModel, choice: SegmentationChoice,
                      image_size: tuple[int, int]) -> tuple[str | np.ndarray, dict[str, object] | None]:
        if choice.label_map is None:
            return choice.method, choice.params
        labels = choice.label_map
        if labels.shape == tuple(model.input_size):
            return labels, None
        if labels.shape == image_size:
            return model.preprocessing.crop_label_map(labels), None
        raise InvalidArgument(f"segmentation.label_map: shape {labels.shape} matches neither the image "
                              f"{image_size} nor the model's input size {tuple(model.input_size)}")

    def explain(self, job: ExplainJob, progress: Progress | None = None) -> Explanation:
        model = self.model(job.model)
        check_labels(job.labels, job.top_labels, model.num_classes)
        segmentation, params = self._segmentation(model, job.segmentation, (job.image.height, job.image.width))
        done = 0

        def record(now: int, total: int) -> None:
            nonlocal done
            self.metrics.batch_size.observe(now - done)
            self.metrics.perturbations.labels(job.model).inc(now - done)
            done = now
            if progress is not None:
                progress(now, total)

        try:
            explanation = explain(
                model, job.image, masking=job.masking, segmentation=segmentation, segmentation_params=params,
                num_samples=job.num_samples, keep_probability=job.keep_probability, kernel_width=job.kernel_width,
                labels=job.labels, top_labels=job.top_labels, seed=job.seed, batch_size=self.settings.batch_size,
                progress=record,
            )
        except InvalidArgument:
            raise
        except ValueError as error:  # the core's messages name the parameter (segmentation, labels, …)
            raise InvalidArgument(str(error)) from None
        for stage, seconds in explanation.timings.items():
            self.metrics.stage.labels("segment" if stage == "segmentation" else stage).observe(seconds)
        return explanation

    def predict(self, model_name: str, image: object, masking: str, mask: np.ndarray | None,
                segment_keep: tuple[SegmentationChoice, list[bool]] | None, top_k: int) -> list[ClassScore]:
        model = self.model(model_name)
        if not 1 <= top_k <= model.num_classes:
            raise InvalidArgument(f"top_k: must be between 1 and {model.num_classes}, got {top_k}")
        crop = model.preprocessing.crop(image)  # type: ignore[arg-type]
        tensor = model.preprocessing.normalise(crop).unsqueeze(0)
        if segment_keep is not None:
            choice, keep = segment_keep
            size = (image.height, image.width)  # type: ignore[attr-defined]
            method, params = self._segmentation(model, choice, size)
            try:
                segments = segment(np.asarray(crop), method, params)
            except ValueError as error:
                raise InvalidArgument(f"segment_keep.segmentation: {error}") from None
            if len(keep) != int(segments.max()) + 1:
                raise InvalidArgument(f"segment_keep.keep: has {len(keep)} values for {int(segments.max()) + 1} "
                                      "segments")
            mask = np.asarray(keep, dtype=np.float32)[segments]
        pixels = torch.ones(1, 1, *tensor.shape[2:]) if mask is None else torch.from_numpy(mask)[None, None]
        logits = cached_masker(masking, model)(tensor, pixels.to(tensor.dtype))
        self.metrics.batch_size.observe(1)
        probabilities = logits.softmax(dim=-1)[0]
        top = probabilities.topk(top_k)
        return [ClassScore(int(i), model.class_names[int(i)], float(p))
                for p, i in zip(top.values.tolist(), top.indices.tolist())]
