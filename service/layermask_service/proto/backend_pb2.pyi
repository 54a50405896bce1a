from layermask_service.proto import explain_pb2 as _explain_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreprocessedImage(_message.Message):
    __slots__ = ("channels", "height", "width", "float32_data")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FLOAT32_DATA_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    float32_data: bytes
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., float32_data: _Optional[bytes] = ...) -> None: ...

class PackedRows(_message.Message):
    __slots__ = ("rows", "columns", "bits")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    columns: int
    bits: bytes
    def __init__(self, rows: _Optional[int] = ..., columns: _Optional[int] = ..., bits: _Optional[bytes] = ...) -> None: ...

class MaskedBatchRequest(_message.Message):
    __slots__ = ("encoded_image", "preprocessed_image", "masking", "segments", "keep", "masks", "labels", "context_digest")
    ENCODED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASKING_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    encoded_image: bytes
    preprocessed_image: PreprocessedImage
    masking: _explain_pb2.Masking
    segments: _explain_pb2.Segments
    keep: PackedRows
    masks: PackedRows
    labels: _containers.RepeatedScalarFieldContainer[int]
    context_digest: str
    def __init__(self, encoded_image: _Optional[bytes] = ..., preprocessed_image: _Optional[_Union[PreprocessedImage, _Mapping]] = ..., masking: _Optional[_Union[_explain_pb2.Masking, str]] = ..., segments: _Optional[_Union[_explain_pb2.Segments, _Mapping]] = ..., keep: _Optional[_Union[PackedRows, _Mapping]] = ..., masks: _Optional[_Union[PackedRows, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., context_digest: _Optional[str] = ...) -> None: ...

class HandlerError(_message.Message):
    __slots__ = ("status", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: int
    message: str
    def __init__(self, status: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class MaskedBatchResponse(_message.Message):
    __slots__ = ("rows", "labels", "probabilities", "error")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    rows: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    probabilities: bytes
    error: HandlerError
    def __init__(self, rows: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ..., probabilities: _Optional[bytes] = ..., error: _Optional[_Union[HandlerError, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("name", "format", "input_height", "input_width", "resize_size", "mean", "std", "interpolation", "class_names", "strategies", "weights_digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    RESIZE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: str
    input_height: int
    input_width: int
    resize_size: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    interpolation: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    strategies: _containers.RepeatedScalarFieldContainer[_explain_pb2.Masking]
    weights_digest: str
    def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., resize_size: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., interpolation: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., strategies: _Optional[_Iterable[_Union[_explain_pb2.Masking, str]]] = ..., weights_digest: _Optional[str] = ...) -> None: ...
