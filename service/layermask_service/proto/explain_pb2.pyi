from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Masking(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASKING_UNSPECIFIED: _ClassVar[Masking]
    MASKING_LAYER: _ClassVar[Masking]
    MASKING_GREY: _ClassVar[Masking]
    MASKING_BLACK: _ClassVar[Masking]
    MASKING_BLUR: _ClassVar[Masking]

class HeatmapFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEATMAP_FORMAT_NONE: _ClassVar[HeatmapFormat]
    HEATMAP_FORMAT_PNG_OVERLAY: _ClassVar[HeatmapFormat]
    HEATMAP_FORMAT_FLOAT16: _ClassVar[HeatmapFormat]

class HeatmapView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEATMAP_VIEW_UNSPECIFIED: _ClassVar[HeatmapView]
    HEATMAP_VIEW_CROP: _ClassVar[HeatmapView]
    HEATMAP_VIEW_ORIGINAL: _ClassVar[HeatmapView]

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_LIME: _ClassVar[Method]
    METHOD_KERNEL_SHAP: _ClassVar[Method]
    METHOD_OCCLUSION: _ClassVar[Method]
MASKING_UNSPECIFIED: Masking
MASKING_LAYER: Masking
MASKING_GREY: Masking
MASKING_BLACK: Masking
MASKING_BLUR: Masking
HEATMAP_FORMAT_NONE: HeatmapFormat
HEATMAP_FORMAT_PNG_OVERLAY: HeatmapFormat
HEATMAP_FORMAT_FLOAT16: HeatmapFormat
HEATMAP_VIEW_UNSPECIFIED: HeatmapView
HEATMAP_VIEW_CROP: HeatmapView
HEATMAP_VIEW_ORIGINAL: HeatmapView
METHOD_UNSPECIFIED: Method
METHOD_LIME: Method
METHOD_KERNEL_SHAP: Method
METHOD_OCCLUSION: Method

class Quickshift(_message.Message):
    __slots__ = ("kernel_size", "max_dist", "ratio", "sigma")
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_DIST_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    kernel_size: float
    max_dist: float
    ratio: float
    sigma: float
    def __init__(self, kernel_size: _Optional[float] = ..., max_dist: _Optional[float] = ..., ratio: _Optional[float] = ..., sigma: _Optional[float] = ...) -> None: ...

class Slic(_message.Message):
    __slots__ = ("n_segments", "compactness", "sigma")
    N_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    COMPACTNESS_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    n_segments: int
    compactness: float
    sigma: float
    def __init__(self, n_segments: _Optional[int] = ..., compactness: _Optional[float] = ..., sigma: _Optional[float] = ...) -> None: ...

class Felzenszwalb(_message.Message):
    __slots__ = ("scale", "sigma", "min_size")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    scale: float
    sigma: float
    min_size: int
    def __init__(self, scale: _Optional[float] = ..., sigma: _Optional[float] = ..., min_size: _Optional[int] = ...) -> None: ...

class Grid(_message.Message):
    __slots__ = ("patch_size",)
    PATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    patch_size: int
    def __init__(self, patch_size: _Optional[int] = ...) -> None: ...

class LabelMap(_message.Message):
    __slots__ = ("height", "width", "labels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class Segmentation(_message.Message):
    __slots__ = ("quickshift", "slic", "felzenszwalb", "grid", "label_map")
    QUICKSHIFT_FIELD_NUMBER: _ClassVar[int]
    SLIC_FIELD_NUMBER: _ClassVar[int]
    FELZENSZWALB_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAP_FIELD_NUMBER: _ClassVar[int]
    quickshift: Quickshift
    slic: Slic
    felzenszwalb: Felzenszwalb
    grid: Grid
    label_map: LabelMap
    def __init__(self, quickshift: _Optional[_Union[Quickshift, _Mapping]] = ..., slic: _Optional[_Union[Slic, _Mapping]] = ..., felzenszwalb: _Optional[_Union[Felzenszwalb, _Mapping]] = ..., grid: _Optional[_Union[Grid, _Mapping]] = ..., label_map: _Optional[_Union[LabelMap, _Mapping]] = ...) -> None: ...

class Occlusion(_message.Message):
    __slots__ = ("window", "stride")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    window: int
    stride: int
    def __init__(self, window: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class Adaptive(_message.Message):
    __slots__ = ("tolerance", "top_k", "batch", "max_samples")
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    tolerance: float
    top_k: int
    batch: int
    max_samples: int
    def __init__(self, tolerance: _Optional[float] = ..., top_k: _Optional[int] = ..., batch: _Optional[int] = ..., max_samples: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "image", "masking", "segmentation", "num_samples", "keep_probability", "kernel_width", "seed", "labels", "top_labels", "heatmap_format", "heatmap_view", "method", "occlusion", "adaptive")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASKING_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KEEP_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    KERNEL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOP_LABELS_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FORMAT_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_VIEW_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    masking: Masking
    segmentation: Segmentation
    num_samples: int
    keep_probability: float
    kernel_width: float
    seed: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    top_labels: int
    heatmap_format: HeatmapFormat
    heatmap_view: HeatmapView
    method: Method
    occlusion: Occlusion
    adaptive: Adaptive
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., masking: _Optional[_Union[Masking, str]] = ..., segmentation: _Optional[_Union[Segmentation, _Mapping]] = ..., num_samples: _Optional[int] = ..., keep_probability: _Optional[float] = ..., kernel_width: _Optional[float] = ..., seed: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ..., top_labels: _Optional[int] = ..., heatmap_format: _Optional[_Union[HeatmapFormat, str]] = ..., heatmap_view: _Optional[_Union[HeatmapView, str]] = ..., method: _Optional[_Union[Method, str]] = ..., occlusion: _Optional[_Union[Occlusion, _Mapping]] = ..., adaptive: _Optional[_Union[Adaptive, _Mapping]] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("label", "name", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: int
    name: str
    probability: float
    def __init__(self, label: _Optional[int] = ..., name: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class LabelExplanation(_message.Message):
    __slots__ = ("label", "name", "weights", "intercept", "score", "local_prediction")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INTERCEPT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    label: int
    name: str
    weights: _containers.RepeatedScalarFieldContainer[float]
    intercept: float
    score: float
    local_prediction: float
    def __init__(self, label: _Optional[int] = ..., name: _Optional[str] = ..., weights: _Optional[_Iterable[float]] = ..., intercept: _Optional[float] = ..., score: _Optional[float] = ..., local_prediction: _Optional[float] = ...) -> None: ...

class Segments(_message.Message):
    __slots__ = ("height", "width", "count", "zlib_uint16")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ZLIB_UINT16_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    count: int
    zlib_uint16: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., count: _Optional[int] = ..., zlib_uint16: _Optional[bytes] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("label", "format", "height", "width", "data")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    label: int
    format: HeatmapFormat
    height: int
    width: int
    data: bytes
    def __init__(self, label: _Optional[int] = ..., format: _Optional[_Union[HeatmapFormat, str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("decode_seconds", "segmentation_seconds", "inference_seconds", "fit_seconds")
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    decode_seconds: float
    segmentation_seconds: float
    inference_seconds: float
    fit_seconds: float
    def __init__(self, decode_seconds: _Optional[float] = ..., segmentation_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., fit_seconds: _Optional[float] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "masking", "segmentation", "seed", "num_samples", "keep_probability", "kernel_width", "segments", "explanations", "top_predictions", "heatmaps", "timings", "method", "converged", "occlusion")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MASKING_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KEEP_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    KERNEL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    masking: Masking
    segmentation: str
    seed: int
    num_samples: int
    keep_probability: float
    kernel_width: float
    segments: Segments
    explanations: _containers.RepeatedCompositeFieldContainer[LabelExplanation]
    top_predictions: _containers.RepeatedCompositeFieldContainer[ClassScore]
    heatmaps: _containers.RepeatedCompositeFieldContainer[Heatmap]
    timings: StageTimings
    method: Method
    converged: bool
    occlusion: Occlusion
    def __init__(self, model: _Optional[str] = ..., masking: _Optional[_Union[Masking, str]] = ..., segmentation: _Optional[str] = ..., seed: _Optional[int] = ..., num_samples: _Optional[int] = ..., keep_probability: _Optional[float] = ..., kernel_width: _Optional[float] = ..., segments: _Optional[_Union[Segments, _Mapping]] = ..., explanations: _Optional[_Iterable[_Union[LabelExplanation, _Mapping]]] = ..., top_predictions: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., heatmaps: _Optional[_Iterable[_Union[Heatmap, _Mapping]]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., method: _Optional[_Union[Method, str]] = ..., converged: _Optional[bool] = ..., occlusion: _Optional[_Union[Occlusion, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("done", "total")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class ExplainEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: ExplainResponse
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[ExplainResponse, _Mapping]] = ...) -> None: ...

class PackedMask(_message.Message):
    __slots__ = ("height", "width", "bits")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    bits: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., bits: _Optional[bytes] = ...) -> None: ...

class SegmentKeep(_message.Message):
    __slots__ = ("segmentation", "keep")
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    segmentation: Segmentation
    keep: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, segmentation: _Optional[_Union[Segmentation, _Mapping]] = ..., keep: _Optional[_Iterable[bool]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "image", "masking", "mask", "segment_keep", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASKING_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_KEEP_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    masking: Masking
    mask: PackedMask
    segment_keep: SegmentKeep
    top_k: int
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., masking: _Optional[_Union[Masking, str]] = ..., mask: _Optional[_Union[PackedMask, _Mapping]] = ..., segment_keep: _Optional[_Union[SegmentKeep, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "predictions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    predictions: _containers.RepeatedCompositeFieldContainer[ClassScore]
    def __init__(self, model: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "input_height", "input_width", "num_classes", "strategies", "is_default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    input_height: int
    input_width: int
    num_classes: int
    strategies: _containers.RepeatedScalarFieldContainer[Masking]
    is_default: bool
    def __init__(self, name: _Optional[str] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., num_classes: _Optional[int] = ..., strategies: _Optional[_Iterable[_Union[Masking, str]]] = ..., is_default: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
