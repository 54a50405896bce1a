"""Decoding untrusted image files and bytes, with size limits checked before any pixel is decoded."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["ALLOWED_FORMATS", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "decode_image", "load_image"]

MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")


def decode_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode PNG, JPEG or WebP ``data`` into an RGB image.

    The byte count, the format and the pixel count (read from the header) are checked before the
    pixels are decoded. Raises ``ValueError`` naming the problem.
    """
    if not data:
        raise ValueError("image is empty")
    if len(data) > max_bytes:
        raise ValueError(f"image is {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ALLOWED_FORMATS:
                raise ValueError(f"image format {image.format} is not supported; use {', '.join(ALLOWED_FORMATS)}")
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f"image is {width}×{height} pixels, more than the limit of {max_pixels}")
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("image bytes are not a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
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
