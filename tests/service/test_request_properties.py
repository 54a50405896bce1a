"""Property tests of the gRPC service's request handling (hypothesis), against one real server.

Whatever the request (every field of ``ExplainRequest`` and ``PredictRequest`` drawn from valid,
invalid, out-of-range and absurd values, and image bytes that are valid small PNG/JPEG/WebP files or
mutations of them), the status is never ``INTERNAL`` or ``UNKNOWN`` (those mean a bug: a validation gap
or a crash), and the server is still SERVING afterwards. Requests drawn only from valid values get ``OK``.

Cheap by construction: images of 16–64 px, at most 16 samples, a server whose ``max_samples`` is 32
(larger values are refused at once), a deadline per call, and a fixed number of derandomised examples.

(Over 300 lines: the strategies for every request field and the properties and regression
cases that use them belong together.)
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from layermask_service.proto import explain_pb2 as pb
from layermask_service.settings import Settings
from tests.helpers.service import RunningServer

MAX_SAMPLES = 32
DEADLINE = 60.0  # seconds per call: generous for a loaded 2-core machine, far above what a call here needs
BROKEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _small(source: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(source).resize((width, height)))


IMAGES = [_encode(_small(source, w, h), fmt)
          for source, (w, h) in ((data.chelsea(), (48, 32)), (data.astronaut(), (32, 32)),
                                 (data.coffee(), (64, 40)), (data.camera(), (24, 40)))
          for fmt in ("PNG", "JPEG", "WEBP")]
"""Valid small images: each of four skimage images (one greyscale) as PNG, JPEG and WebP."""


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                     max_samples=MAX_SAMPLES, max_queue=8))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with server.channel() as opened:
        yield opened


def call(channel: grpc.Channel, request: pb.ExplainRequest | pb.PredictRequest, method: str) -> grpc.StatusCode:
    """Send ``request`` to ``method``; its status code (a stream is read to its end)."""
    kind = pb.PredictResponse if method == "Predict" else pb.ExplainResponse
    try:
        if method == "ExplainStream":
            stream = channel.unary_stream("/layermask.v1.ExplainService/ExplainStream",
                                          request_serializer=type(request).SerializeToString,
                                          response_deserializer=pb.ExplainEvent.FromString)
            for _ in stream(request, timeout=DEADLINE):
                pass
        else:
            unary = channel.unary_unary(f"/layermask.v1.ExplainService/{method}",
                                        request_serializer=type(request).SerializeToString,
                                        response_deserializer=kind.FromString)
            unary(request, timeout=DEADLINE)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def assert_handled(channel: grpc.Channel, request: Any, method: str) -> grpc.StatusCode:
    code = call(channel, request, method)
    assert code not in BROKEN, f"{method} answered {code.name} to {request!r:.2000}"
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    return code


# ------------------------------------------------------------------------------------------- strategies
INT32 = st.one_of(st.sampled_from([0, 1, -1, 2, 8, 16, 224, 999, 1000, 2**31 - 1, -(2**31)]),
                  st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
DOUBLES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 5e-324, 1e300, -1e300, math.inf,
                                     -math.inf, math.nan, 1e6, 1e-6, 100.0, 100.5, 16.0, 16.5]),
                    st.floats(allow_nan=True, allow_infinity=True))
MODELS = st.one_of(st.sampled_from(["", "efficientnet_lite0", "resnet9000", "EfficientNet_Lite0", "\x00", "é" * 99]),
                   st.text(max_size=40))
MASKING = st.one_of(st.sampled_from(list(pb.Masking.values())), INT32)
HEATMAP = st.one_of(st.sampled_from(list(pb.HeatmapFormat.values())), INT32)
HAS_VIEW = "heatmap_view" in pb.ExplainRequest.DESCRIPTOR.fields_by_name  # being added alongside this file
VIEWS = list(pb.HeatmapView.values()) if HAS_VIEW else [0]  # type: ignore[attr-defined, unused-ignore]


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def set_fields(message: Any, **values: Any) -> Any:
    """``message`` with each value that is not ``None`` set (so unset optional fields stay unset)."""
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)
    return message


@st.composite
def wild_segmentations(draw: st.DrawFn) -> pb.Segmentation:
    method = draw(st.sampled_from(["none", "quickshift", "slic", "felzenszwalb", "grid", "label_map"]))
    segmentation = pb.Segmentation()
    if method == "quickshift":
        segmentation.quickshift.SetInParent()
        set_fields(segmentation.quickshift, kernel_size=draw(optional(DOUBLES)), max_dist=draw(optional(DOUBLES)),
                   ratio=draw(optional(DOUBLES)), sigma=draw(optional(DOUBLES)))
    elif method == "slic":
        segmentation.slic.SetInParent()
        set_fields(segmentation.slic, n_segments=draw(optional(INT32)), compactness=draw(optional(DOUBLES)),
                   sigma=draw(optional(DOUBLES)))
    elif method == "felzenszwalb":
        segmentation.felzenszwalb.SetInParent()
        set_fields(segmentation.felzenszwalb, scale=draw(optional(DOUBLES)), sigma=draw(optional(DOUBLES)),
                   min_size=draw(optional(INT32)))
    elif method == "grid":
        segmentation.grid.SetInParent()
        set_fields(segmentation.grid, patch_size=draw(optional(INT32)))
    elif method == "label_map":
        height, width = draw(st.sampled_from([(224, 224), (2, 2), (0, 4), (-1, -1), (32, 48), (1, 224)]))
        count = max(0, height * width) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        values = draw(st.sampled_from(["zeros", "halves", "random", "wild"]))
        if values == "zeros":
            labels = [0] * max(count, 0)
        elif values == "halves":
            labels = [int(i >= count // 2) for i in range(max(count, 0))]
        elif values == "random":
            labels = np.random.default_rng(count).integers(0, 8, max(count, 0)).tolist()
        else:
            labels = [draw(INT32) for _ in range(min(max(count, 0), 8))] + [0] * max(count - 8, 0)
        segmentation.label_map.CopyFrom(pb.LabelMap(height=height, width=width, labels=labels))
    return segmentation


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid small image, or one changed by bit flips, truncation, a splice with another, or odd bytes."""
    image = bytearray(draw(st.sampled_from(IMAGES)))
    edit = draw(st.sampled_from(["none", "flip", "truncate", "splice", "insert", "header", "empty", "random"]))
    if edit == "flip":
        for position in draw(st.lists(st.integers(0, len(image) - 1), min_size=1, max_size=8)):
            image[position] ^= 1 << draw(st.integers(0, 7))
    elif edit == "truncate":
        del image[draw(st.integers(0, len(image) - 1)):]
    elif edit == "splice":
        other = draw(st.sampled_from(IMAGES))
        image = image[:draw(st.integers(0, len(image)))] + other[draw(st.integers(0, len(other))):]
    elif edit == "insert":
        position = draw(st.integers(0, len(image)))
        image[position:position] = draw(st.binary(min_size=1, max_size=64))
    elif edit == "header":  # the PNG/WebP/JPEG size fields are within the first 24 bytes
        position = draw(st.integers(0, 20))
        image[position:position + 4] = draw(st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                                              b"\0\x01\x86\xa0"]))
    elif edit == "empty":
        image = bytearray()
    elif edit == "random":
        image = bytearray(draw(st.binary(max_size=200)))
    return bytes(image)


@st.composite
def wild_explain_requests(draw: st.DrawFn) -> pb.ExplainRequest:
    request = pb.ExplainRequest(model=draw(MODELS), image=draw(mutated_images()), masking=draw(MASKING),
                                heatmap_format=draw(HEATMAP))
    request.segmentation.CopyFrom(draw(wild_segmentations()))
    if HAS_VIEW:
        request.heatmap_view = draw(st.one_of(st.sampled_from(VIEWS), INT32))
    # Valid sample counts are kept small (the server refuses more than MAX_SAMPLES at once).
    set_fields(request, num_samples=draw(optional(st.one_of(st.integers(-3, 16), INT32))),
               keep_probability=draw(optional(DOUBLES)), kernel_width=draw(optional(DOUBLES)),
               seed=draw(optional(INT64)), top_labels=draw(optional(INT32)))
    request.labels.extend(draw(st.one_of(st.just([]), st.lists(INT32, max_size=4),
                                         st.sampled_from([[5, 5], [-1], [999], [1000], list(range(30))]))))
    return request


@st.composite
def wild_predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    request = pb.PredictRequest(model=draw(MODELS), image=draw(mutated_images()), masking=draw(MASKING))
    set_fields(request, top_k=draw(optional(INT32)))
    visibility = draw(st.sampled_from(["none", "mask", "segment_keep"]))
    if visibility == "mask":
        height, width = draw(st.one_of(st.sampled_from([(224, 224), (0, 0), (223, 224), (1, 1), (-224, -224)]),
                                       st.tuples(INT32, INT32)))
        size = draw(st.sampled_from([0, 1, 6271, 6272, 6273, 100]))
        request.mask.CopyFrom(pb.PackedMask(height=height, width=width, bits=bytes([draw(st.integers(0, 255))]) * size))
    elif visibility == "segment_keep":
        request.segment_keep.segmentation.CopyFrom(draw(wild_segmentations()))
        request.segment_keep.keep.extend(draw(st.lists(st.booleans(), max_size=70)))
    return request


@st.composite
def valid_explain_requests(draw: st.DrawFn) -> pb.ExplainRequest:
    request = pb.ExplainRequest(model=draw(st.sampled_from(["", "efficientnet_lite0"])),
                                image=draw(st.sampled_from(IMAGES)), masking=draw(st.sampled_from(pb.Masking.values())),
                                num_samples=draw(st.integers(8, 16)),
                                heatmap_format=draw(st.sampled_from(pb.HeatmapFormat.values())))
    if HAS_VIEW:
        request.heatmap_view = draw(st.sampled_from(VIEWS))
    method = draw(st.sampled_from(["grid", "slic", "felzenszwalb", "quickshift", "label_map", "default"]))
    if method == "grid":
        request.segmentation.grid.patch_size = draw(st.integers(16, 112))
    elif method == "slic":
        set_fields(request.segmentation.slic, n_segments=draw(st.integers(8, 40)),
                   compactness=draw(optional(st.floats(1.0, 30.0))), sigma=draw(optional(st.floats(0.0, 3.0))))
    elif method == "felzenszwalb":
        set_fields(request.segmentation.felzenszwalb, scale=draw(st.floats(20.0, 200.0)),
                   sigma=draw(optional(st.floats(0.0, 1.0))), min_size=draw(st.integers(10, 100)))
        request.segmentation.felzenszwalb.SetInParent()
    elif method == "quickshift":
        request.segmentation.quickshift.SetInParent()
        set_fields(request.segmentation.quickshift, kernel_size=draw(optional(st.floats(1.0, 4.0))),
                   max_dist=draw(optional(st.floats(5.0, 50.0))), ratio=draw(optional(st.floats(0.0, 1.0))),
                   sigma=draw(optional(st.floats(0.0, 1.0))))
    elif method == "label_map":  # quadrants of the model's input with any label values
        values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=4, max_size=4, unique=True))
        rows, cols = np.indices((224, 224)) // 112
        labels = np.asarray(values)[rows * 2 + cols]
        request.segmentation.label_map.CopyFrom(pb.LabelMap(height=224, width=224, labels=labels.ravel().tolist()))
    set_fields(request, keep_probability=draw(optional(st.floats(0.05, 1.0))),
               kernel_width=draw(optional(st.floats(0.01, 100.0))), seed=draw(optional(st.integers(0, 2**63 - 1))))
    if draw(st.booleans()):
        request.labels.extend(draw(st.lists(st.integers(0, 999), min_size=1, max_size=3, unique=True)))
    else:
        set_fields(request, top_labels=draw(optional(st.integers(1, 3))))
    return request


@st.composite
def valid_predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    request = pb.PredictRequest(model=draw(st.sampled_from(["", "efficientnet_lite0"])),
                                image=draw(st.sampled_from(IMAGES)), masking=draw(st.sampled_from(pb.Masking.values())))
    set_fields(request, top_k=draw(optional(st.integers(1, 1000))))
    visibility = draw(st.sampled_from(["none", "mask", "segment_keep"]))
    if visibility == "mask":
        seed = draw(st.integers(0, 2**32 - 1))
        bits = np.packbits(np.random.default_rng(seed).integers(0, 2, 224 * 224, dtype=np.uint8)).tobytes()
        request.mask.CopyFrom(pb.PackedMask(height=224, width=224, bits=bits))
    elif visibility == "segment_keep":
        patch = draw(st.sampled_from([32, 56, 112]))
        request.segment_keep.segmentation.grid.patch_size = patch
        request.segment_keep.keep.extend(draw(st.lists(st.booleans(), min_size=(224 // patch) ** 2,
                                                       max_size=(224 // patch) ** 2)))
    return request


# ----------------------------------------------------------------------------------------------- tests
@PROPERTY
@given(request=wild_explain_requests(), method=st.sampled_from(["Explain", "ExplainStream"]))
def test_any_explain_request_is_answered_without_a_server_error(
        channel: grpc.Channel, request: pb.ExplainRequest, method: str) -> None:
    assert_handled(channel, request, method)


@PROPERTY
@given(request=wild_predict_requests())
def test_any_predict_request_is_answered_without_a_server_error(channel: grpc.Channel,
                                                                 request: pb.PredictRequest) -> None:
    assert_handled(channel, request, "Predict")


@settings(PROPERTY, max_examples=25)
@given(request=valid_explain_requests(), method=st.sampled_from(["Explain", "ExplainStream"]))
def test_valid_explain_requests_succeed(channel: grpc.Channel, request: pb.ExplainRequest, method: str) -> None:
    assert assert_handled(channel, request, method) == grpc.StatusCode.OK


@settings(PROPERTY, max_examples=40)
@given(request=valid_predict_requests())
def test_valid_predict_requests_succeed(channel: grpc.Channel, request: pb.PredictRequest) -> None:
    assert assert_handled(channel, request, "Predict") == grpc.StatusCode.OK


# ------------------------------------------------- regressions: inputs that once got INTERNAL or worse
def small_request(**fields: Any) -> pb.ExplainRequest:
    defaults = {"image": IMAGES[0], "num_samples": 8, "segmentation": pb.Segmentation(grid=pb.Grid(patch_size=56))}
    return pb.ExplainRequest(**{**defaults, **fields})


def elongated_png(width: int, height: int) -> bytes:
    return _encode(np.zeros((height, width, 3), np.uint8), "PNG")


@pytest.mark.parametrize(("method", "request_", "message"), [
    # A kernel width whose square underflows left no row any weight (ValueError in the fit).
    ("Explain", small_request(kernel_width=1e-300), "kernel_width:"),
    # One whose square overflows (OverflowError).
    ("Explain", small_request(kernel_width=1e300), "kernel_width:"),
    # A huge Gaussian sigma failed to allocate its kernel ("Maximum allowed size exceeded")...
    ("Explain", small_request(segmentation=pb.Segmentation(quickshift=pb.Quickshift(sigma=1e300))),
     "segmentation.quickshift: quickshift parameter sigma must be at most 100"),
    ("Explain", small_request(segmentation=pb.Segmentation(felzenszwalb=pb.Felzenszwalb(sigma=1e300))),
     "segmentation.felzenszwalb: felzenszwalb parameter sigma"),
    # ... and a large one (10⁶) ran for minutes in the uninterruptible segmentation.
    ("Explain", small_request(segmentation=pb.Segmentation(slic=pb.Slic(sigma=1e6))),
     "segmentation.slic: slic parameter sigma must be at most 100"),
    ("Predict", pb.PredictRequest(image=IMAGES[0], segment_keep=pb.SegmentKeep(
        segmentation=pb.Segmentation(slic=pb.Slic(sigma=1e6)), keep=[True])),
     "segment_keep.segmentation.slic: slic parameter sigma"),
    # skimage's quickshift raised ValueError for a kernel_size in (0, 1) (found by bench/fuzz.py).
    ("Explain", small_request(segmentation=pb.Segmentation(quickshift=pb.Quickshift(kernel_size=0.5))),
     "segmentation.quickshift: quickshift parameter kernel_size must be at least 1"),
    # Quickshift's time grows with kernel_size squared (9 s at 30 on a 224-px crop).
    ("Explain", small_request(segmentation=pb.Segmentation(quickshift=pb.Quickshift(kernel_size=1000))),
     "segmentation.quickshift: quickshift parameter kernel_size must be at most 16"),
    # skimage's slic corrupted the heap for a compactness of ~1e-200 and below: the server aborted
    # ("corrupted size vs. prev_size") later, at some free (bench/fuzz.py, request 5208 of seed 0).
    ("Predict", pb.PredictRequest(image=IMAGES[0], segment_keep=pb.SegmentKeep(
        segmentation=pb.Segmentation(slic=pb.Slic(n_segments=2, compactness=1e-300)), keep=[True, False])),
     "segment_keep.segmentation.slic: slic parameter compactness must be at least 0.01"),
    # A 100000×1 PNG of 370 bytes was resized to 256×25,600,000 pixels before the crop (MemoryError, or
    # 20 GB of memory where nothing limits it).
    ("Explain", small_request(image=elongated_png(100_000, 1)), "image: image is 100000×1 pixels"),
    ("Predict", pb.PredictRequest(image=elongated_png(1, 50_000)), "image: image is 1×50000 pixels"),
])
def test_once_broken_requests_are_invalid_arguments(channel: grpc.Channel, method: str, request_: Any,
                                                    message: str) -> None:
    kind = pb.PredictResponse if method == "Predict" else pb.ExplainResponse
    unary = channel.unary_unary(f"/layermask.v1.ExplainService/{method}",
                                request_serializer=type(request_).SerializeToString,
                                response_deserializer=kind.FromString)
    with pytest.raises(grpc.RpcError) as caught:
        unary(request_, timeout=DEADLINE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert message in caught.value.details()  # type: ignore[attr-defined]


def test_extreme_but_allowed_aspect_ratio_succeeds(channel: grpc.Channel) -> None:
    request = pb.PredictRequest(image=elongated_png(3200, 32))  # 100:1, the most allowed
    assert call(channel, request, "Predict") == grpc.StatusCode.OK


@pytest.mark.parametrize("method", ["Explain", "ExplainStream", "Predict", "ListModels"])
def test_undecodable_request_bytes_are_invalid_arguments(channel: grpc.Channel, method: str) -> None:
    """Bytes that do not parse as the request were answered UNKNOWN, with a traceback logged at ERROR."""
    identity = lambda raw: raw  # noqa: E731
    bad = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, with a length past the end
    if method == "ExplainStream":
        with pytest.raises(grpc.RpcError) as caught:
            list(channel.unary_stream(f"/layermask.v1.ExplainService/{method}", request_serializer=identity,
                                      response_deserializer=identity)(bad, timeout=DEADLINE))
    else:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(f"/layermask.v1.ExplainService/{method}", request_serializer=identity,
                                response_deserializer=identity)(bad, timeout=DEADLINE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert caught.value.details().startswith("request: not a valid layermask.v1.")  # type: ignore[attr-defined]
