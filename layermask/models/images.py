"""Decoding untrusted image files and bytes into an upright RGB image: the rules, in one place.

Every refusal is a ``ValueError`` naming the problem (the gRPC service answers INVALID_ARGUMENT on
the field ``image``). In order:

1. Bytes: empty data, and data over ``max_bytes``, are refused.
2. Format, by content: the data must start with a PNG, JPEG or WebP signature; a file's extension
   is ignored. GIF (still or animated), BMP and TIFF are refused by name, anything else as "not a
   PNG, JPEG or WebP image". Pillow is given only the plugin of the signature's format, so bytes
   that start like a PNG are never parsed as another format (and are refused if they are not one).
3. Pixel limit, before Pillow parses the file: this module reads width × height from the header
   (the PNG IHDR; the first JPEG frame header before the first scan; the WebP VP8 / VP8L frame
   or the VP8X canvas) and refuses a size over ``max_pixels`` with a message naming the limit, or
   a header it cannot read as corrupt. Nothing in proportion to a claimed size is allocated
   before that. The size Pillow reads is checked again, and a pixel stream is never decoded past
   the header's size (a small PNG whose zlib stream inflates hugely is cut off there). Pillow's
   own ``Image.MAX_IMAGE_PIXELS`` check (only reachable with ``max_pixels`` above it) raises
   ``DecompressionBombWarning`` or ``DecompressionBombError``; both become the same ValueError.
   Sides differing by more than ``MAX_ASPECT_RATIO`` are refused here too: the preprocessing
   resizes the shorter side to 256 before cropping, so a 100000×1 PNG of a few hundred bytes
   would become 256×25,600,000 pixels (20 GB); at 100:1 the resized image stays under 20 MB.
4. Animations (APNG, animated WebP) and multi-picture JPEG (MPO): only the first frame is decoded
   (for an APNG, the default image); other frames are never read, nor counted.
5. Orientation: the EXIF orientation tag is applied, so the result is the upright image (a
   rotation keeps the pixel count, so the limit of rule 3 holds for the upright size too).
6. Colour: transparency (RGBA, LA, PA, or a palette or grey image with a transparent colour) is
   composited on the opaque white ``BACKGROUND``; 16-bit grey (modes I;16 and I) is scaled to 8
   bits (v × 255 / 65535, rounded), not clipped; CMYK (Adobe-inverted included), L, 1, P and
   YCbCr are converted by Pillow. The result is mode RGB at the image's own size, 1×1 included:
   the model's preprocessing resizes it to the model's input.
7. Truncated or corrupt data, at any point of the header or the pixels, is refused as "image is
   corrupt or truncated" with the decoder's reason.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ALLOWED_FORMATS", "BACKGROUND", "MAX_ASPECT_RATIO", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "decode_image",
           "load_image"]

MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 100
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
BACKGROUND = (255, 255, 255)
"""What transparent pixels become."""

_REFUSED_SIGNATURES = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\0", "TIFF"),
                       (b"MM\0*", "TIFF"))
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0…SOF15 (not DHT, JPG, DAC)
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0…RST7: no length field
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                  zlib.error)


class _Refusal(ValueError):
    """A refusal by this module's rules, passed on as it is."""


def _corrupt(fmt: str, what: str) -> _Refusal:
    return _Refusal(f"image is corrupt or truncated: {fmt} header {what}")


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            raise _Refusal(f"image format {name} is not supported; use PNG, JPEG or WebP")
    raise _Refusal("image bytes are not a PNG, JPEG or WebP image")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise _corrupt("PNG", "has no IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise _corrupt("JPEG", f"has no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF or marker in _JPEG_STANDALONE:  # fill byte, or a marker without a segment
            position += 1 if marker == 0xFF else 2
            continue
        if marker in _JPEG_FRAMES and position + 9 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        if marker in (0xDA, 0xD9):  # start of scan or end of image, before any frame header
            break
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    raise _corrupt("JPEG", "has no frame header (SOF) before the image data")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: the canvas, which the decoder allocates
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        return (int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF)
    raise _corrupt("WebP", "has no VP8, VP8L or VP8X chunk with a size")


_HEADER_SIZE: dict[str, Callable[[bytes], tuple[int, int]]] = {"PNG": _png_size, "JPEG": _jpeg_size,
                                                                "WEBP": _webp_size}


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise _Refusal(f"image is corrupt: its header gives a size of {width}×{height} pixels")
    if width * height > max_pixels:
        raise _Refusal(f"image is {width}×{height} pixels, more than the limit of {max_pixels} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise _Refusal(f"image is {width}×{height} pixels; its sides may differ by a factor of at most "
                       f"{MAX_ASPECT_RATIO}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey: scale, don't clip at 255
        grey = np.clip(np.asarray(image, dtype=np.int32), 0, 65535)
        return Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        composite = Image.new("RGB", image.size, BACKGROUND)
        composite.paste(rgba, mask=rgba)
        return composite
    return image.convert("RGB")


def decode_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode PNG, JPEG or WebP ``data`` into an upright RGB image, by the rules of this module's docstring."""
    if not data:
        raise ValueError("image is empty")
    if len(data) > max_bytes:
        raise ValueError(f"image is {len(data)} bytes, more than the limit of {max_bytes} bytes")
    try:
        fmt = _sniff(data)
        _check_pixels(_HEADER_SIZE[fmt](data), max_pixels)
        image = Image.open(io.BytesIO(data), formats=[fmt])
        try:
            _check_pixels(image.size, max_pixels)
            image.load()  # the first frame only
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
        finally:
            image.close()
    except _Refusal as refusal:
        raise ValueError(str(refusal)) from None
    except UnidentifiedImageError:
        raise ValueError(f"image is corrupt or truncated: not a readable {fmt} file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"image is more than the decoder's pixel limit: {error}") from None
    except _PILLOW_ERRORS as error:
        raise ValueError(f"image is corrupt or truncated: {error}") from None


def load_image(path: str | os.PathLike[str], *, max_bytes: int = MAX_IMAGE_BYTES,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read and decode an image file; ``FileNotFoundError`` if missing, ``ValueError`` if unusable."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"image file not found: {file}")
    size = file.stat().st_size
    if size > max_bytes:
        raise ValueError(f"image file {file} is {size} bytes, more than the limit of {max_bytes}")
    return decode_image(file.read_bytes(), max_bytes=max_bytes, max_pixels=max_pixels)
