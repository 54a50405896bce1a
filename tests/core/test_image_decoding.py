"""Hostile and unusual images (issue #12): each is decoded correctly or refused with a ValueError naming the problem.

Every fixture is made here with Pillow and NumPy. The rules are in ``layermask/models/images.py``'s docstring.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, WebPImagePlugin

from layermask.models import images
from layermask.models.images import MAX_IMAGE_PIXELS, decode_image, load_image
from layermask.models.preprocessing import Preprocessing

LIMIT = f"more than the limit of {MAX_IMAGE_PIXELS} pixels"
CORRUPT = "image is corrupt or truncated"
NOT_AN_IMAGE = "image bytes are not a PNG, JPEG or WebP image"
NO_GIF = "image format GIF is not supported; use PNG, JPEG or WebP"
SECONDS = 1.0  # generous bound on refusing a header, or decoding a small file, on a loaded machine
BOMB_RSS_KIB = 64 * 1024  # far below the ≥ 800 MB that any bomb's claimed size needs as RGB


# --- fixtures: encoders and header surgery ------------------------------------------------------------------------

def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, idat: bytes = zlib.compress(bytes(64)), depth: int = 8,
                 colour: int = 0) -> bytes:
    """A valid PNG (8-bit grey unless told) whose IHDR says ``width``×``height``, with the given IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def rgb16_rows(colour: tuple[int, int, int]) -> bytes:
    """The IDAT of a 2×2 16-bit RGB PNG of one colour."""
    row = b"\0" + struct.pack(">3H", *colour) * 2
    return zlib.compress(row * 2)


def png_zlib_bomb() -> bytes:
    """A 64×64 grey PNG whose IDAT inflates to 256 MiB (a few hundred KB compressed)."""
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(bytes(1 << 20)) for _ in range(256)) + packer.flush()
    return png_claiming(64, 64, idat)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("RGB", (8, 8), "red"), "JPEG"))
    frame = data.index(b"\xff\xc0")  # Pillow writes a baseline frame header
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and first frame both say ``width``×``height``."""
    data = bytearray(encoded(Image.new("P", (2, 2)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b"\x2c\x00\x00\x00\x00")
    data[descriptor + 5:descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_claiming(chunk: str, width: int, height: int) -> bytes:
    """A 1×1 WebP of the given first chunk (``VP8 ``, ``VP8L`` or ``VP8X``) whose header says ``width``×``height``."""
    pixel = Image.new("RGB", (1, 1), "red")
    if chunk == "VP8X":
        exif = Image.Exif()
        exif[0x0112] = 1
        data = bytearray(encoded(pixel, "WEBP", lossless=True, exif=exif))  # EXIF needs the extended header
    else:
        data = bytearray(encoded(pixel, "WEBP", lossless=chunk == "VP8L"))
    assert data[12:16] == chunk.ljust(4).encode()
    if chunk == "VP8X":
        data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif chunk == "VP8L":
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)  # keep the alpha and version bits
        data[21:25] = (bits | (width - 1) | (height - 1) << 14).to_bytes(4, "little")
    else:
        data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


QUADRANTS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))


def upright() -> np.ndarray:
    """48 wide × 32 high: red, green above blue, white; no rotation or flip maps it onto itself."""
    pattern = np.zeros((32, 48, 3), dtype=np.uint8)
    for index, colour in enumerate(QUADRANTS):
        row, column = divmod(index, 2)
        pattern[16 * row:16 * row + 16, 24 * column:24 * column + 24] = colour
    return pattern


# The stored pixels for an EXIF orientation, defined from the EXIF meaning, not from Pillow's table:
# 3 shows the stored image turned 180°, 6 turned 90° clockwise, 8 turned 90° anticlockwise.
STORED = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}


def exif_rotated(fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright())))
    options: dict[str, object] = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {"lossless": fmt == "WEBP"}
    return encoded(stored, fmt, exif=exif, **options)


def animation(fmt: str, **options: object) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "lime", "blue")]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


def palette_with_transparency() -> bytes:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([9, 9, 9, 200, 30, 40] + [0] * 762)
    image.putpixel((1, 1), 1)
    return encoded(image, "PNG", transparency=0)


def grey16() -> bytes:
    return encoded(Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.uint16)), "PNG")


def noise(fmt: str) -> bytes:
    return encoded(Image.effect_noise((64, 64), 40).convert("RGB"), fmt)


def truncated(data: bytes, keep: float | int) -> bytes:
    return data[:keep] if isinstance(keep, int) else data[:int(len(data) * keep)]


# --- the table ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ok:
    """Decodes to an RGB image of ``size``, and ``check(pixels)`` holds for its H×W×3 array."""

    size: tuple[int, int]
    check: Callable[[np.ndarray], bool] = lambda pixels: True


def near(expected: np.ndarray | tuple[int, ...], tolerance: float = 8.0) -> Callable[[np.ndarray], bool]:
    return lambda pixels: float(np.abs(pixels.astype(float) - np.asarray(expected, dtype=float)).mean()) < tolerance


Expected = Ok | str  # a str: the ValueError's message contains it

BOMBS: dict[str, Callable[[], bytes]] = {
    "bomb png IHDR 100000x100000": lambda: png_claiming(100_000, 100_000),
    "bomb jpeg SOF 65000x65000": lambda: jpeg_claiming(65_000, 65_000),
    "bomb gif screen+frame 65535x65535": lambda: gif_claiming(65_535, 65_535),
    "bomb webp VP8X 16383x16383": lambda: webp_claiming("VP8X", 16_383, 16_383),
    "bomb webp VP8X 12000x12000": lambda: webp_claiming("VP8X", 12_000, 12_000),  # under Pillow's own error
    "bomb webp VP8L 16383x16383": lambda: webp_claiming("VP8L", 16_383, 16_383),
    "bomb webp VP8 16383x16383": lambda: webp_claiming("VP8", 16_383, 16_383),
}

CASES: list[tuple[str, Callable[[], bytes], Expected]] = [
    # EXIF orientation: the upright pattern comes back
    *[(f"exif {orientation} {fmt}", lambda f=fmt, o=orientation: exif_rotated(f, o), Ok((48, 32), near(upright())))
      for fmt in ("JPEG", "PNG", "WEBP") for orientation in (3, 6, 8) if fmt == "JPEG" or orientation == 6],
    # animations: the first frame; APNG still decodes with its later frames cut off (never read)
    ("apng", lambda: animation("PNG"), Ok((16, 16), near((255, 0, 0), 1))),
    ("apng cut after frame 0", lambda: truncated(animation("PNG"), 0.6), Ok((16, 16), near((255, 0, 0), 1))),
    ("webp animated", lambda: animation("WEBP", lossless=True), Ok((16, 16), near((255, 0, 0), 1))),
    ("jpeg multi-picture (MPO)", lambda: animation("MPO"), Ok((16, 16), near((255, 0, 0), 4))),
    ("gif animated", lambda: animation("GIF"), NO_GIF),
    ("gif still", lambda: encoded(Image.new("RGB", (8, 8)), "GIF"), NO_GIF),
    # colour: transparency on white, 16-bit scaled, CMYK, grey, bilevel
    ("png palette+transparency", palette_with_transparency,
     Ok((4, 4), lambda p: p[1, 1].tolist() == [200, 30, 40] and int((p == 255).all(axis=2).sum()) == 15)),
    ("png LA half transparent", lambda: encoded(Image.new("LA", (3, 3), (0, 128)), "PNG"),
     Ok((3, 3), near((127,) * 3, 1))),
    ("png RGBA clear", lambda: encoded(Image.new("RGBA", (3, 3), (0, 0, 0, 0)), "PNG"),
     Ok((3, 3), near((255,) * 3, 0.1))),
    ("webp RGBA clear", lambda: encoded(Image.new("RGBA", (3, 3), (0, 0, 0, 0)), "WEBP", lossless=True),
     Ok((3, 3), near((255,) * 3, 0.1))),
    ("png grey transparent colour", lambda: encoded(Image.new("L", (3, 3), 7), "PNG", transparency=7),
     Ok((3, 3), near((255,) * 3, 0.1))),
    ("png 16-bit grey I;16", grey16,
     Ok((4, 1), lambda p: p[0, :, 0].tolist() == [0, 1, 128, 255] and bool((p == p[:, :, :1]).all()))),
    ("png 16-bit RGB", lambda: png_claiming(2, 2, rgb16_rows((0x0A00, 0x14FF, 0xFFFF)), depth=16, colour=2),
     Ok((2, 2), near((10, 20, 255), 0.6))),
    ("jpeg CMYK", lambda: encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
     Ok((16, 16), near((255, 0, 0), 6))),
    ("png L", lambda: encoded(Image.new("L", (5, 4), 77), "PNG"), Ok((5, 4), near((77,) * 3, 0.1))),
    ("jpeg L", lambda: encoded(Image.new("L", (5, 4), 77), "JPEG"), Ok((5, 4), near((77,) * 3, 2))),
    ("png bilevel", lambda: encoded(Image.new("1", (9, 2), 1), "PNG"), Ok((9, 2), near((255,) * 3, 0.1))),
    ("jpeg progressive", lambda: encoded(Image.new("RGB", (50, 40), (200, 10, 10)), "JPEG", progressive=True),
     Ok((50, 40), near((200, 10, 10), 4))),
    *[(f"1x1 {fmt}", lambda f=fmt: encoded(Image.new("RGB", (1, 1), (1, 2, 3)), f, **({"lossless": True}
      if f == "WEBP" else {})), Ok((1, 1))) for fmt in ("PNG", "JPEG", "WEBP")],
    ("png zlib bomb: bounded by IHDR", png_zlib_bomb, Ok((64, 64), near((0,) * 3, 0.1))),
    # bombs: refused from the header
    *[(name, factory, LIMIT if "gif" not in name else NO_GIF) for name, factory in BOMBS.items()],
    ("png zero width", lambda: png_claiming(0, 10), "size of 0×10 pixels"),
    # a strip the preprocessing would resize to 256×25,600,000 pixels: refused from the header
    ("png 100000x1 strip", lambda: png_claiming(100_000, 1), "differ by a factor of at most 100"),
    ("png 1x101 strip", lambda: encoded(Image.new("RGB", (1, 101)), "PNG"), "differ by a factor of at most 100"),
    ("png 1x100 strip", lambda: encoded(Image.new("RGB", (1, 100), (9, 9, 9)), "PNG"), Ok((1, 100))),
    # nothing, text, other formats, a format's signature over another's data
    ("zero bytes", lambda: b"", "image is empty"),
    ("text", lambda: b"Hello, I am not an image.\n" * 4, NOT_AN_IMAGE),
    ("bmp", lambda: encoded(Image.new("RGB", (4, 4)), "BMP"), "image format BMP is not supported"),
    ("tiff", lambda: encoded(Image.new("RGB", (4, 4)), "TIFF"), "image format TIFF is not supported"),
    ("png signature, jpeg data", lambda: b"\x89PNG\r\n\x1a\n" + noise("JPEG"), CORRUPT),
    ("jpeg signature, png data", lambda: b"\xff\xd8\xff" + noise("PNG"), CORRUPT),
    ("webp header, jpeg data", lambda: noise("WEBP")[:12] + noise("JPEG"), CORRUPT),
    ("png IHDR chunk, jpeg data", lambda: png_claiming(64, 64, noise("JPEG")), CORRUPT),
    # truncated, at the signature, in the header, in the pixels
    *[(f"truncated {fmt} {keep}", lambda f=fmt, k=keep: truncated(noise(f), k), message)
      for fmt, keeps, message in [("PNG", (8, 30, 0.5), CORRUPT), ("JPEG", (3, 40, 0.5), CORRUPT),
                                  ("WEBP", (16, 30, 0.5), CORRUPT), ("GIF", (10, 0.5), NO_GIF)]
      for keep in keeps],
    # cut inside the signature: no format is recognised
    ("truncated PNG 4 bytes", lambda: noise("PNG")[:4], NOT_AN_IMAGE),
    ("truncated JPEG 2 bytes", lambda: noise("JPEG")[:2], NOT_AN_IMAGE),
    ("truncated WEBP 10 bytes", lambda: noise("WEBP")[:10], NOT_AN_IMAGE),
]


@pytest.mark.parametrize(("factory", "expected"), [pytest.param(f, e, id=i) for i, f, e in CASES])
def test_image_decoding(factory: Callable[[], bytes], expected: Expected) -> None:
    data = factory()
    started = time.perf_counter()
    if isinstance(expected, Ok):
        image = decode_image(data)
        assert time.perf_counter() - started < SECONDS
        assert image.mode == "RGB" and image.size == expected.size
        assert expected.check(np.asarray(image))
    else:
        with pytest.raises(ValueError) as refused:
            decode_image(data)
        assert time.perf_counter() - started < SECONDS
        assert type(refused.value) is ValueError and expected in str(refused.value)


# --- the rules the table cannot show ------------------------------------------------------------------------------

def test_the_pixel_limit_holds_for_the_upright_size() -> None:
    data = exif_rotated("JPEG", 6)  # stored 32×48, shown 48×32: the same 1536 pixels
    assert decode_image(data, max_pixels=48 * 32).size == (48, 32)
    with pytest.raises(ValueError, match="32×48 pixels, more than the limit of 1535 pixels"):
        decode_image(data, max_pixels=48 * 32 - 1)


def test_pillows_own_bomb_check_never_escapes_as_another_type() -> None:
    """With ``max_pixels`` above Pillow's ``Image.MAX_IMAGE_PIXELS``, Pillow's warning or error becomes a ValueError."""
    assert Image.MAX_IMAGE_PIXELS is not None
    warned = int(Image.MAX_IMAGE_PIXELS ** 0.5) + 1  # over Pillow's warning, under its error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for side in (warned, 100_000):
            with pytest.raises(ValueError, match="more than the decoder's pixel limit") as refused:
                decode_image(png_claiming(side, side), max_pixels=10**12)
            assert type(refused.value) is ValueError and "pixels" in str(refused.value)


def test_animations_decode_only_their_first_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    sought: list[int] = []
    for plugin in (PngImagePlugin.PngImageFile, WebPImagePlugin.WebPImageFile):
        original = plugin.seek

        def spy(self: Image.Image, frame: int, original: Callable[..., None] = original) -> None:
            sought.append(frame)
            original(self, frame)

        monkeypatch.setattr(plugin, "seek", spy)
    for data in (animation("PNG"), animation("WEBP", lossless=True)):
        decode_image(data)
    assert all(frame == 0 for frame in sought), sought


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (3, 300)])
def test_tiny_images_reach_the_models_input_size(size: tuple[int, int]) -> None:
    preprocessing = Preprocessing()
    image = decode_image(encoded(Image.new("RGB", size, (9, 99, 199)), "PNG"))
    assert preprocessing(image).shape == (3, *preprocessing.input_size)


def test_a_files_extension_does_not_choose_its_format(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(encoded(Image.new("RGB", (7, 5), "red"), "JPEG"))
    (tmp_path / "photo.jpg").write_bytes(gif_claiming(4, 4))
    assert load_image(tmp_path / "photo.png").size == (7, 5)
    with pytest.raises(ValueError, match=NO_GIF):
        load_image(tmp_path / "photo.jpg")


MEASURE = """
import importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("images", sys.argv[1])
images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(images)
growth = {}
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        images.decode_image(data)
        outcome = "decoded"
    except ValueError as error:
        outcome = str(error)
    growth[path] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, outcome)
print(json.dumps(growth))
"""


def test_bombs_allocate_nothing_like_their_claimed_size(tmp_path: Path) -> None:
    """In a fresh process (only Pillow and NumPy loaded), peak RSS barely moves while each bomb is refused."""
    paths = {}
    for index, (name, factory) in enumerate({**BOMBS, "png zlib bomb": png_zlib_bomb}.items()):
        paths[name] = tmp_path / f"{index}.bin"
        paths[name].write_bytes(factory())
    result = subprocess.run([sys.executable, "-c", MEASURE, images.__file__, *map(str, paths.values())],
                            capture_output=True, text=True, timeout=120, check=True)
    growth = json.loads(result.stdout)
    for name, path in paths.items():
        kib, outcome = growth[str(path)]
        assert kib < BOMB_RSS_KIB, f"{name}: peak RSS grew {kib} KiB ({outcome})"
        expected = "decoded" if name == "png zlib bomb" else NO_GIF if "gif" in name else LIMIT
        assert expected in outcome, f"{name}: {outcome}"
