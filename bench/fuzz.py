"""Fuzz the gRPC ExplainService: generated and mutated requests against a live ``layermask serve``.

Starts ``layermask serve`` as a subprocess on loopback with free ports (``LAYERMASK_MAX_SAMPLES``
lowered so that huge ``num_samples`` are refused at once), then sends ``--count`` requests, or as many
as fit in ``--max-seconds``, each built from its own seed (``--seed`` and its index), of these kinds:

* ``valid``: a valid Explain, ExplainStream or Predict on a tiny image, with 2–16 samples;
* ``field``: a valid request with one to three fields set to wild values (negative, NaN, ±inf, huge,
  out-of-range enums, wrong sizes, duplicated labels);
* ``image``: a valid request whose image bytes are mutated (bit flips, truncation, splices of two
  images, inserted and repeated chunks, a wrong header);
* ``structure``: a protobuf with every field random, of each request type;
* ``raw``: random bytes, or a valid request serialized and then mutated, sent as the serialized
  request of a method through a generic ``unary_unary``/``unary_stream`` with identity serializers;
* ``list``: ListModels.

Reports, as JSON, the count per status code (and per kind), the INTERNAL and UNKNOWN calls (goal 0;
each with its index, to replay with ``--only``), whether the server is alive and SERVING at the end,
the ``internal error`` lines of its log, and its RSS (``VmRSS`` of /proc/PID/status) after a warm-up of
``--warmup`` requests ("before") and at the end ("after"), with the growth in percent (goal < 10 %).

    .venv/bin/python bench/fuzz.py [--count 10000] [--max-seconds 1800] [--seed 0] [--warmup 300]

(Over 300 lines: the generators of every request kind and the run that replays any index with
``--only`` stay in one script, so that one file reproduces the figures in docs/reliability.md.)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from skimage import data

from layermask_service.proto import explain_pb2 as pb

SERVICE = "/layermask.v1.ExplainService/"
MAX_SAMPLES = 64  # the server's limit here: larger num_samples are refused before any compute


# ----------------------------------------------------------------------------------------------- images
def _encode(array: np.ndarray, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_corpus() -> list[bytes]:
    """Small valid PNG, JPEG and WebP images (16–64 px) of several modes, from skimage's sample images."""
    sources = [data.chelsea(), data.astronaut(), data.coffee(), data.camera(), data.rocket()]
    images = []
    for index, source in enumerate(sources):
        side = (16, 32, 48, 64, 40)[index]
        small = np.asarray(Image.fromarray(source).resize((side, side * 3 // 4 or 1)))
        for fmt, options in (("PNG", {}), ("JPEG", {"quality": 70}), ("WEBP", {"quality": 60}),
                             ("JPEG", {"progressive": True})):
            images.append(_encode(small, fmt, **options))
    rgba = np.dstack([np.asarray(Image.fromarray(data.coffee()).resize((32, 24)))[..., :3],
                      np.full((24, 32), 128, np.uint8)])
    images.append(_encode(rgba, "PNG"))
    images.append(_encode(rgba, "WEBP", lossless=True))
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((40, 30)).convert("P").save(buffer, format="PNG")
    images.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)).save(buffer, format="PNG")
    images.append(buffer.getvalue())
    images.append(_encode(np.full((2, 3, 3), 200, np.uint8), "PNG"))  # tiny, upscaled by the service
    return images


def mutate_bytes(rng: random.Random, blob: bytes, corpus: list[bytes]) -> bytes:
    """``blob`` changed by one to four random edits."""
    out = bytearray(blob)
    for _ in range(rng.randint(1, 4)):
        edit = rng.randrange(8)
        if edit == 0 and out:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif edit == 1 and out:  # truncation
            del out[rng.randrange(len(out)):]
        elif edit == 2:  # splice with another image
            other = rng.choice(corpus)
            cut, other_cut = rng.randrange(len(out) + 1), rng.randrange(len(other) + 1)
            out = out[:cut] + other[other_cut:]
        elif edit == 3:  # random bytes inserted
            i = rng.randrange(len(out) + 1)
            out[i:i] = rng.randbytes(rng.randint(1, 64))
        elif edit == 4 and out:  # a chunk repeated
            i = rng.randrange(len(out))
            j = min(len(out), i + rng.randint(1, 256))
            out[j:j] = out[i:j] * rng.randint(1, 8)
        elif edit == 5 and len(out) > 8:  # bytes set to interesting values
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(out))
                out[i] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x01))
        elif edit == 6 and len(out) > 24:  # a 32-bit field (a PNG width, a chunk length) set to an extreme
            i = rng.randrange(len(out) - 4)
            out[i:i + 4] = struct.pack(">I", rng.choice((0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 100000)))
        elif edit == 7 and out:  # a range dropped
            i = rng.randrange(len(out))
            del out[i:i + rng.randint(1, 128)]
    return bytes(out)


def odd_image(rng: random.Random) -> bytes:
    """Valid files the service should refuse or handle: extreme shapes, other formats, huge headers."""
    choice = rng.randrange(6)
    if choice == 0:  # extreme aspect ratio, a few hundred bytes
        width = rng.choice((1000, 20000, 100000))
        return _encode(np.zeros((1, width, 3), np.uint8), "PNG")
    if choice == 1:
        return _encode(np.zeros((rng.choice((1000, 50000)), 1, 3), np.uint8), "PNG")
    if choice == 2:  # a format that is not allowed
        return _encode(np.zeros((8, 8, 3), np.uint8), rng.choice(("GIF", "BMP", "TIFF", "PPM")))
    if choice == 3:  # a PNG header claiming a huge image
        png = bytearray(_encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
        png[16:24] = struct.pack(">II", rng.choice((70000, 1 << 30)), rng.choice((70000, 1 << 30)))
        return bytes(png)
    if choice == 4:
        return _encode(np.zeros((1, 1, 3), np.uint8), rng.choice(("PNG", "JPEG", "WEBP")))
    return b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randint(0, 64))


# ------------------------------------------------------------------------------------------------ values
INT32 = (0, 1, -1, 2, 3, 7, 8, 1000, 999, -(2**31), 2**31 - 1, 2**16, 224, 225, 112, 50176)
INT64 = (0, 1, -1, 2**63 - 1, -(2**63), 2**32, 12345)
DOUBLES = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, -1e-300, 5e-324, 1e300, -1e300, 1.7976931348623157e308,
           math.inf, -math.inf, math.nan, 1e6, 1e-6, 100.0, 101.0, 16.0, 17.0, 0.999999, 1.0000001)


def wild_int32(rng: random.Random) -> int:
    return rng.choice(INT32) if rng.random() < 0.7 else rng.randint(-(2**31), 2**31 - 1)


def wild_double(rng: random.Random) -> float:
    if rng.random() < 0.7:
        return rng.choice(DOUBLES)
    return rng.uniform(-1e3, 1e3) if rng.random() < 0.5 else math.ldexp(rng.random(), rng.randint(-1074, 1023))


def wild_string(rng: random.Random) -> str:
    return rng.choice(("", "efficientnet_lite0", "resnet9000", "EFFICIENTNET_LITE0", " efficientnet_lite0",
                       "../../etc/passwd", "\x00", "é" * 300, "x" * 10000, "efficientnet_lite0\x00",
                       "".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(1, 20)))))


def random_segmentation(rng: random.Random, wild: bool) -> pb.Segmentation:
    """A segmentation, sane unless ``wild``: every method, with random subsets of its parameters."""
    method = rng.choice(("quickshift", "slic", "felzenszwalb", "grid", "label_map", "none"))
    seg = pb.Segmentation()
    double: Callable[[float, float], float] = (lambda lo, hi: wild_double(rng)) if wild else \
        (lambda lo, hi: rng.uniform(lo, hi))
    integer: Callable[[int, int], int] = (lambda lo, hi: wild_int32(rng)) if wild else \
        (lambda lo, hi: rng.randint(lo, hi))
    if method == "quickshift":
        seg.quickshift.SetInParent()
        for name, lo, hi in (("kernel_size", 1.0, 4.0), ("max_dist", 5.0, 200.0), ("ratio", 0.0, 1.0),
                             ("sigma", 0.0, 2.0)):
            if rng.random() < 0.5:
                setattr(seg.quickshift, name, double(lo, hi))
    elif method == "slic":
        seg.slic.SetInParent()
        if rng.random() < 0.6:
            seg.slic.n_segments = integer(4, 60)
        if rng.random() < 0.4:
            seg.slic.compactness = double(1.0, 30.0)
        if rng.random() < 0.4:
            seg.slic.sigma = double(0.0, 3.0)
    elif method == "felzenszwalb":
        seg.felzenszwalb.SetInParent()
        if rng.random() < 0.5:
            seg.felzenszwalb.scale = double(10.0, 200.0)
        if rng.random() < 0.5:
            seg.felzenszwalb.sigma = double(0.0, 2.0)
        if rng.random() < 0.5:
            seg.felzenszwalb.min_size = integer(5, 100)
    elif method == "grid":
        seg.grid.SetInParent()
        if rng.random() < 0.8:
            seg.grid.patch_size = integer(16, 112)
    elif method == "label_map":
        seg.label_map.SetInParent()
        if wild:
            height, width = rng.choice(((224, 224), (2, 2), (0, 5), (-1, -1), (224, 1), (1, 224),
                                        (wild_int32(rng), wild_int32(rng))))
            count = height * width if 0 < height * width <= 224 * 224 else rng.randint(0, 64)
            if rng.random() < 0.3:
                count += rng.choice((-1, 1))
            seg.label_map.height, seg.label_map.width = height, width
            seg.label_map.labels.extend(wild_int32(rng) for _ in range(max(count, 0)))
        else:
            patch = rng.choice((56, 112))
            rows, cols = np.indices((224, 224)) // patch
            seg.label_map.height = seg.label_map.width = 224
            seg.label_map.labels.extend((rows * (224 // patch) + cols).ravel().tolist())
    return seg


# ---------------------------------------------------------------------------------------------- requests
def valid_explain(rng: random.Random, image: bytes) -> pb.ExplainRequest:
    request = pb.ExplainRequest(image=image, masking=rng.choice((0, 1, 2, 3, 4)), num_samples=rng.randint(2, 16),
                                heatmap_format=rng.choice((0, 1, 2)))
    request.segmentation.CopyFrom(rng.choice((
        pb.Segmentation(grid=pb.Grid(patch_size=rng.choice((32, 56, 112)))),
        pb.Segmentation(slic=pb.Slic(n_segments=rng.randint(4, 30))),
        pb.Segmentation(felzenszwalb=pb.Felzenszwalb(scale=rng.uniform(50.0, 300.0), min_size=50)),
        pb.Segmentation(quickshift=pb.Quickshift(kernel_size=2.0, max_dist=10.0)),
        random_segmentation(rng, wild=False) if rng.random() < 0.2 else pb.Segmentation(grid=pb.Grid()))))
    if rng.random() < 0.5:
        request.seed = rng.randint(0, 2**63 - 1)
    if rng.random() < 0.3:
        request.keep_probability = rng.uniform(0.05, 1.0)
    if rng.random() < 0.3:
        request.kernel_width = rng.uniform(0.01, 10.0)
    if rng.random() < 0.3:
        request.labels.extend(rng.sample(range(1000), rng.randint(1, 3)))
    elif rng.random() < 0.3:
        request.top_labels = rng.randint(1, 3)
    return request


def cheap_explain(rng: random.Random, image: bytes) -> pb.ExplainRequest:
    """A valid explanation of the least cost: 2–4 samples, 4 grid cells, no heatmap."""
    return pb.ExplainRequest(image=image, masking=rng.choice((0, 1, 2, 3, 4)), num_samples=rng.randint(2, 4),
                             segmentation=pb.Segmentation(grid=pb.Grid(patch_size=112)))


def valid_predict(rng: random.Random, image: bytes) -> pb.PredictRequest:
    request = pb.PredictRequest(image=image, masking=rng.choice((0, 1, 2, 3, 4)))
    if rng.random() < 0.5:
        request.top_k = rng.randint(1, 1000)
    visibility = rng.randrange(3)
    if visibility == 1:
        bits = np.packbits(np.random.default_rng(rng.randrange(2**32)).integers(0, 2, 224 * 224, dtype=np.uint8))
        request.mask.CopyFrom(pb.PackedMask(height=224, width=224, bits=bits.tobytes()))
    elif visibility == 2:
        patch = rng.choice((56, 112))
        request.segment_keep.segmentation.grid.patch_size = patch
        request.segment_keep.keep.extend(rng.random() < 0.5 for _ in range((224 // patch) ** 2))
    return request


def wild_explain_fields(rng: random.Random, request: pb.ExplainRequest) -> None:
    """Set one to three fields of ``request`` to wild values."""
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(("model", "masking", "segmentation", "num_samples", "keep_probability", "kernel_width",
                            "seed", "labels", "top_labels", "heatmap_format", "image"))
        if field == "model":
            request.model = wild_string(rng)
        elif field in ("masking", "heatmap_format"):
            setattr(request, field, wild_int32(rng))
        elif field == "segmentation":
            request.segmentation.CopyFrom(random_segmentation(rng, wild=True))
        elif field in ("num_samples", "top_labels"):
            setattr(request, field, wild_int32(rng))
        elif field in ("keep_probability", "kernel_width"):
            setattr(request, field, wild_double(rng))
        elif field == "seed":
            request.seed = rng.choice(INT64)
        elif field == "labels":
            del request.labels[:]
            request.labels.extend(rng.choice(((5, 5), (-1,), (2**31 - 1,), (999,), (1000,), (0, 1, 0),
                                              tuple(range(50)), tuple(wild_int32(rng) for _ in range(3)))))
        elif field == "image":
            request.image = odd_image(rng)
    if request.HasField("num_samples") and request.num_samples > 16 and rng.random() < 0.5:
        request.num_samples = 8  # keep the valid-but-expensive share small


def wild_predict_fields(rng: random.Random, request: pb.PredictRequest) -> None:
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(("model", "masking", "mask", "segment_keep", "top_k", "image"))
        if field == "model":
            request.model = wild_string(rng)
        elif field == "masking":
            request.masking = wild_int32(rng)
        elif field == "mask":
            height, width = rng.choice(((224, 224), (0, 0), (-224, -224), (224, 223), (1, 1),
                                        (wild_int32(rng), wild_int32(rng))))
            size = rng.choice((0, 1, 6272, 6271, 6273, rng.randint(0, 10000)))
            request.mask.CopyFrom(pb.PackedMask(height=height, width=width,
                                                bits=bytes(rng.choice((0, 255)) for _ in range(size))))
        elif field == "segment_keep":
            request.segment_keep.segmentation.CopyFrom(random_segmentation(rng, wild=rng.random() < 0.7))
            del request.segment_keep.keep[:]
            request.segment_keep.keep.extend(rng.random() < 0.5 for _ in range(rng.choice((0, 1, 2, 4, 16, 1000))))
        elif field == "top_k":
            request.top_k = wild_int32(rng)
        elif field == "image":
            request.image = odd_image(rng)


def random_message(rng: random.Random, message: Any, depth: int = 0) -> Any:
    """Every field of ``message`` (recursively) set at random, or left unset."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        repeated = field.is_repeated
        if field.message_type is not None:
            if depth < 3 and not repeated:
                random_message(rng, getattr(message, field.name), depth + 1)
                getattr(message, field.name).SetInParent()
            continue
        values = [random_scalar(rng, field) for _ in range(rng.choice((1, 2, 5, 50)) if repeated else 1)]
        if repeated:
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, values[0])
    return message


def random_scalar(rng: random.Random, field: Any) -> Any:
    kind = field.type
    if kind == field.TYPE_STRING:
        return wild_string(rng)
    if kind == field.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 300))
    if kind == field.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == field.TYPE_DOUBLE:
        return wild_double(rng)
    if kind == field.TYPE_INT64:
        return rng.choice(INT64)
    return wild_int32(rng)  # int32 and enums (open in proto3)


@dataclass
class Call:
    """One request: the method, how it is sent (typed message, or raw bytes) and its kind."""

    kind: str
    method: str  # Explain, ExplainStream, Predict, ListModels
    payload: bytes


def make_call(seed: int, index: int, corpus: list[bytes]) -> Call:
    rng = random.Random(seed * 1_000_003 + index)
    roll = rng.random()
    image = rng.choice(corpus)
    if roll < 0.04:
        kind = "valid"
        method = rng.choice(("Explain", "ExplainStream", "Predict"))
        message: Any = valid_predict(rng, image) if method == "Predict" else valid_explain(rng, image)
    elif roll < 0.40:
        kind = "field"
        method = rng.choice(("Explain", "ExplainStream", "Predict", "Predict"))
        if method == "Predict":
            message = valid_predict(rng, image)
            wild_predict_fields(rng, message)
        else:
            message = cheap_explain(rng, image) if rng.random() < 0.7 else valid_explain(rng, image)
            wild_explain_fields(rng, message)
    elif roll < 0.70:
        kind = "image"
        method = rng.choice(("Explain", "ExplainStream", "Predict", "Predict"))
        message = valid_predict(rng, image) if method == "Predict" else cheap_explain(rng, image)
        message.image = mutate_bytes(rng, image, corpus)
    elif roll < 0.85:
        kind = "structure"
        method = rng.choice(("Explain", "ExplainStream", "Predict", "ListModels"))
        message = random_message(rng, {"Predict": pb.PredictRequest, "ListModels": pb.ListModelsRequest}.get(
            method, pb.ExplainRequest)())
        if method != "ListModels" and rng.random() < 0.5:
            message.image = image
        if method in ("Explain", "ExplainStream") and message.num_samples > 16:
            message.num_samples = rng.choice((2, 8, 16, MAX_SAMPLES + 1, 2**31 - 1))
    elif roll < 0.97:
        kind = "raw"
        method = rng.choice(("Explain", "ExplainStream", "Predict", "ListModels"))
        if rng.random() < 0.5:
            return Call(kind, method, rng.randbytes(rng.choice((0, 1, 2, 5, 17, 100, 1000))))
        base = valid_predict(rng, image) if method == "Predict" else valid_explain(rng, image)
        return Call(kind, method, mutate_bytes(rng, base.SerializeToString(), [image]))
    else:
        kind, method, message = "list", "ListModels", pb.ListModelsRequest()
    return Call(kind, method, message.SerializeToString())


# ---------------------------------------------------------------------------------------------- server
class Server:
    """``layermask serve`` in a subprocess on loopback, its log in a temporary file."""

    def __init__(self, max_samples: int) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="layermask-fuzz-", suffix=".log",  # noqa: SIM115
                                               delete=False)  # kept open while the server writes it
        command = [sys.executable, "-m", "layermask_service", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--grace-seconds", "5"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LAYERMASK_MAX_SAMPLES": str(max_samples)}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.target = f"127.0.0.1:{self._port(300)}"

    def _port(self, bound: float) -> int:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", Path(self.log.name).read_text())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {Path(self.log.name).read_text()}")
            time.sleep(0.2)
        raise TimeoutError("the server did not start listening")

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert found is not None
        return int(found.group(1))

    def serving(self, channel: grpc.Channel) -> bool:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        except grpc.RpcError:
            return False
        return bool(status == health_pb2.HealthCheckResponse.SERVING)

    def internal_errors(self) -> list[str]:
        return [line for line in Path(self.log.name).read_text().splitlines() if "internal error" in line]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def send(channel: grpc.Channel, call: Call, timeout: float) -> str:
    """Send ``call`` as raw bytes; the status code's name."""
    identity: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
    try:
        if call.method == "ExplainStream":
            stream = channel.unary_stream(SERVICE + call.method, request_serializer=identity,
                                          response_deserializer=identity)
            for _ in stream(call.payload, timeout=timeout):
                pass
        else:
            unary = channel.unary_unary(SERVICE + call.method, request_serializer=identity,
                                        response_deserializer=identity)
            unary(call.payload, timeout=timeout)
    except grpc.RpcError as error:
        return str(error.code().name)  # type: ignore[attr-defined]
    return "OK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000, help="requests to send (default 10000)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=300, help="requests before the 'before' RSS is read")
    parser.add_argument("--concurrency", type=int, default=2, help="calls in flight at once")
    parser.add_argument("--timeout", type=float, default=60.0, help="each call's deadline, seconds")
    parser.add_argument("--only", type=int, nargs="*", help="replay these indices only (printing each status)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()

    corpus = image_corpus()
    started_server = time.monotonic()
    server = Server(MAX_SAMPLES)
    summary: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "seed": args.seed}
    try:
        channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20),
                                                                ("grpc.max_receive_message_length", 64 << 20)])
        while not server.serving(channel):
            if time.monotonic() - started_server > 300 or server.process.poll() is not None:
                raise RuntimeError("the server did not become SERVING")
            time.sleep(0.5)
        summary["server_start_seconds"] = round(time.monotonic() - started_server, 1)
        if args.only is not None:
            for index in args.only:
                call = make_call(args.seed, index, corpus)
                print(index, call.kind, call.method, send(channel, call, args.timeout), flush=True)
            return

        codes: Counter[str] = Counter()
        by_kind: dict[str, Counter[str]] = {}
        by_method: dict[str, Counter[str]] = {}
        bad: list[dict[str, Any]] = []
        slowest: list[tuple[float, int, str, str, str]] = []
        rss_start = server.rss_kib()
        rss_before: int | None = None
        sent = 0
        began = time.monotonic()

        def one(index: int) -> tuple[int, Call, str, float]:
            call = make_call(args.seed, index, corpus)
            t = time.monotonic()
            code = send(channel, call, args.timeout)
            return index, call, code, time.monotonic() - t

        with ThreadPoolExecutor(args.concurrency) as pool:
            index = 0
            while index < args.count and time.monotonic() - began < args.max_seconds:
                chunk = range(index, min(args.count, index + 50))
                for i, call, code, seconds in pool.map(one, chunk):
                    codes[code] += 1
                    by_kind.setdefault(call.kind, Counter())[code] += 1
                    by_method.setdefault(call.method, Counter())[code] += 1
                    slowest = sorted([*slowest, (seconds, i, call.kind, call.method, code)], reverse=True)[:5]
                    if code in ("INTERNAL", "UNKNOWN"):
                        bad.append({"index": i, "kind": call.kind, "method": call.method, "code": code,
                                    "payload_bytes": len(call.payload)})
                index = chunk.stop
                sent = index
                if rss_before is None and sent >= args.warmup:
                    rss_before = server.rss_kib()
                if server.process.poll() is not None:
                    break
        duration = time.monotonic() - began
        alive = server.process.poll() is None
        serving = alive and server.serving(channel)
        rss_after = server.rss_kib() if alive else None
        summary.update({
            "requests": sent, "duration_seconds": round(duration, 1),
            "requests_per_second": round(sent / duration, 1) if duration else None,
            "codes": dict(codes.most_common()),
            "codes_by_kind": {k: dict(v.most_common()) for k, v in sorted(by_kind.items())},
            "codes_by_method": {k: dict(v.most_common()) for k, v in sorted(by_method.items())},
            "internal_or_unknown": len(bad), "internal_or_unknown_calls": bad[:50],
            "server_log_internal_errors": len(server.internal_errors()),
            "crashed": not alive, "serving_at_end": serving, "exit_code": server.process.returncode,
            "rss_kib": {"at_start": rss_start, "before (after the warm-up of "
                        f"{min(args.warmup, sent)} requests)": rss_before, "after": rss_after},
            "rss_growth_percent": round(100 * (rss_after - rss_before) / rss_before, 1)
            if rss_after and rss_before else None,
            "slowest": [{"seconds": round(s, 2), "index": i, "kind": k, "method": m, "code": c}
                        for s, i, k, m, c in slowest],
            "server_log": server.log.name,
        })
        channel.close()
    finally:
        server.stop()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if summary.get("internal_or_unknown") or summary.get("crashed") or not summary.get("serving_at_end", True):
        sys.exit(1)


if __name__ == "__main__":
    main()
