"""Decoding untrusted images: limits are checked before pixels are decoded."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from layermask.models.images import decode_image, load_image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encoded(Image.new("L", (40, 30), 128), fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_pixel_limit_is_checked_from_the_header() -> None:
    huge = encoded(Image.new("1", (8000, 8000)), "PNG")  # a few KB compressed, 64 MP decoded
    assert len(huge) < 100_000
    with pytest.raises(ValueError, match="8000×8000 pixels, more than the limit"):
        decode_image(huge, max_pixels=10_000_000)


def test_byte_limit() -> None:
    with pytest.raises(ValueError, match="more than the limit of 100"):
        decode_image(encoded(Image.effect_noise((64, 64), 50), "PNG"), max_bytes=100)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"not an image at all", "not a PNG, JPEG or WebP"),
    (encoded(Image.new("RGB", (8, 8)), "BMP"), "format BMP is not supported"),
    (encoded(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "corrupt or truncated"),
])
def test_bad_bytes_give_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_image(data)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "missing.png")
