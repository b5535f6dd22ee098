"""Hostile and odd images through `decode_image`: each is decoded to clean RGB or refused with a reason.

Every input is generated here, in memory or in pytest's tmp dirs (the 30000x30000 bomb is a
~0.5 MB PNG built with zlib). Offline, a few seconds:
`pytest -q tests/test_hostile_images.py`.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visplay.data.images import ImageError, decode_image, image_id, resize_to_pixel_range

REPO = Path(__file__).resolve().parents[1]


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png(width: int, height: int, *, bit_depth: int = 1, colour_type: int = 0, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory) -> Path:
    """A valid 30000x30000 1-bit PNG: ~0.5 MB on disk, 900 Mpx (0.9-2.7 GB) once decoded."""
    side = 30000
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(1)
    idat = b"".join([comp.compress(row * 1000) for _ in range(side // 1000)] + [comp.flush()])
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(crafted_png(side, side, idat=idat))
    return path


def reason_of(data, **kw) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kw)
    assert isinstance(info.value, ValueError)
    return info.value.reason


# --- empty, missing, not an image -------------------------------------------------------------


def test_zero_byte_file_and_bytes(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png") as info:
        decode_image(empty)
    assert info.value.reason == "empty_file"
    assert reason_of(b"", where="row 3") == "empty_file"


def test_missing_and_odd_inputs(tmp_path):
    assert reason_of(tmp_path / "nope.png") == "missing_file"
    assert reason_of(tmp_path) == "unreadable"  # a directory
    assert reason_of({"bytes": None, "path": None}) == "missing_data"
    assert reason_of(12345) == "unsupported_type"


def test_not_an_image_and_unlisted_formats():
    assert reason_of(b"hello, I am text pretending to be a picture") == "not_an_image"
    # EPS would make PIL run Ghostscript on load(); it is not in the allowed formats.
    assert reason_of(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n") == "not_an_image"
    assert reason_of(encode(noise(), "PNG"), formats=("JPEG",)) == "not_an_image"
    with pytest.raises(ValueError, match="unknown image formats"):
        decode_image(encode(noise()), formats=("NOPE",))


# --- truncation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    data = encode(noise(128, 96), fmt)
    assert reason_of(data[: len(data) // 2], where=f"half.{fmt}") == "truncated"


def test_truncated_lazily_opened_pil_image():
    data = encode(noise(128, 96), "PNG")
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))  # header read, pixels not yet
    assert reason_of(lazy) == "truncated"


def test_truncated_header_is_refused_not_crashed():
    data = encode(noise(), "PNG")
    assert reason_of(data[:40]) in {"truncated", "unreadable", "not_an_image"}


# --- extension is not trusted -------------------------------------------------------------------


def test_png_bytes_named_jpg_decode_fine(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encode(noise(), "PNG"))
    img = decode_image(path)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.array_equal(np.asarray(img), np.asarray(noise()))


# --- size and shape -----------------------------------------------------------------------------


def test_tiny_and_extreme_aspect_refused():
    assert reason_of(encode(Image.new("RGB", (1, 1)))) == "too_small"
    assert reason_of(encode(Image.new("RGB", (7, 100)))) == "too_small"
    assert decode_image(encode(Image.new("RGB", (8, 8)))).size == (8, 8)
    assert reason_of(encode(Image.new("L", (2010, 10)))) == "extreme_aspect_ratio"
    assert decode_image(encode(Image.new("L", (2000, 10)))).size == (2000, 10)


def test_bomb_refused_quickly(bomb_png):
    for data in (bomb_png, bomb_png.read_bytes(), {"bytes": None, "path": str(bomb_png)}):
        t = time.perf_counter()
        assert reason_of(data) == "too_many_pixels"
        assert time.perf_counter() - t < 1.0


def test_bomb_refused_with_bounded_memory_even_without_pil_guard(bomb_png):
    """In a fresh process with PIL's global guard switched off (as much VLM code does)."""
    script = textwrap.dedent(
        """
        import os, resource, sys, time
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = None
        from visplay.data.images import ImageError, decode_image
        if os.path.exists("/proc/self/status"):  # a regression fails with MemoryError, not swapping
            vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
            limit = vm * 1024 + 512 * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            decode_image(sys.argv[1])
            reason = "decoded"
        except ImageError as e:
            reason = e.reason
        grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(reason, time.perf_counter() - t, grew_kb)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(bomb_png)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    reason, seconds, grew_kb = out.stdout.split()
    assert reason == "too_many_pixels"
    assert float(seconds) < 1.0
    assert int(grew_kb) < 32 * 1024  # decoding would need >= 900 MB


def test_own_pixel_limit_applies_below_pil_guard():
    # 9000x9000 = 81 Mpx: under PIL's default guard (89 Mpx), over ours (64 Mpx). Header only.
    assert reason_of(crafted_png(9000, 9000, bit_depth=8, colour_type=2, idat=b"x")) == "too_many_pixels"
    data = encode(noise(40, 40))
    assert reason_of(data, max_decode_pixels=1000) == "too_many_pixels"
    assert decode_image(data, max_decode_pixels=1600).size == (40, 40)


# --- colour modes -------------------------------------------------------------------------------


def test_cmyk_jpeg():
    img = decode_image(encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95))
    assert img.mode == "RGB"
    r, g, b = img.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60  # red


def test_16_bit_grey_png_is_rescaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    src = Image.fromarray(ramp)
    assert src.mode == "I;16"
    out = np.asarray(decode_image(encode(src)))
    assert out.shape == (16, 64, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    assert 120 <= out[0, 32, 0] <= 136  # mid-grey, where PIL's plain convert gives 255
    assert (out[..., 0] == out[..., 2]).all()


def test_palette_png_with_transparency_composited_on_white():
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0 = red (transparent), 1 = blue
    pal.paste(1, (10, 0, 20, 10))
    img = decode_image(encode(pal, transparency=0))
    assert img.getpixel((2, 2)) == (255, 255, 255)
    assert img.getpixel((15, 5)) == (0, 0, 255)


def test_rgba_and_la_composited_on_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.paste((0, 0, 0, 128), (8, 0, 16, 16))
    img = decode_image(encode(rgba))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 2 for c in img.getpixel((12, 0)))
    la = decode_image(encode(Image.new("LA", (16, 16), (0, 0))))
    assert la.mode == "RGB" and la.getpixel((0, 0)) == (255, 255, 255)


def test_caller_pil_image_is_not_modified():
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 40))
    out = decode_image(rgba, min_pixels=1024)
    assert rgba.mode == "RGBA" and rgba.size == (16, 16)
    assert out.mode == "RGB" and out.size == (32, 32) and out is not rgba


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = decode_image(data)
    assert img.mode == "RGB" and img.getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_applied():
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img = decode_image(encode(stored, "JPEG", exif=exif, quality=95))
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


# --- inputs, ids, resizing ----------------------------------------------------------------------


def test_all_input_kinds_agree(tmp_path):
    data = encode(noise())
    path = tmp_path / "a.png"
    path.write_bytes(data)
    want = np.asarray(noise())
    for given_ in (data, bytearray(data), path, str(path), {"bytes": data, "path": "elsewhere.png"},
                   {"bytes": None, "path": str(path)}, Image.open(io.BytesIO(data))):
        assert np.array_equal(np.asarray(decode_image(given_)), want)


def test_image_id_is_content_hash():
    a, b = encode(noise(seed=1)), encode(noise(seed=2))
    assert image_id(a) == image_id(bytes(a)) != image_id(b)
    assert image_id(a).startswith("sha256:") and len(image_id(a)) == 7 + 16


def test_resize_into_pixel_range():
    small = decode_image(encode(noise(100, 50)), min_pixels=512 * 512, max_pixels=2048 * 2048)
    assert 512 * 512 <= small.size[0] * small.size[1] <= 2048 * 2048
    assert abs(small.size[0] / small.size[1] - 2) < 0.01
    big = decode_image(encode(noise(300, 200)), max_pixels=10_000)
    assert big.size[0] * big.size[1] <= 10_000 and abs(big.size[0] / big.size[1] - 1.5) < 0.05
    assert decode_image(encode(noise(100, 50)), min_pixels=100, max_pixels=10**6).size == (100, 50)
    with pytest.raises(ValueError, match="min_pixels"):
        decode_image(encode(noise()), min_pixels=10, max_pixels=5)


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 200), h=st.integers(1, 200), lo=st.integers(1, 20_000), span=st.integers(0, 50_000))
def test_resize_bounds_property(w, h, lo, span):
    hi = lo + span
    out = resize_to_pixel_range(Image.new("RGB", (w, h)), lo, hi)
    area, new = w * h, out.size[0] * out.size[1]
    if area > hi:
        if min(w, h) ** 2 * hi >= area:  # the short side stays >= 1 px after scaling
            assert new <= hi
    elif area < lo:
        assert new >= lo
        if span >= out.size[0] + out.size[1]:  # room for the rounding
            assert new <= hi
    else:
        assert out.size == (w, h)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_corrupted_bytes_never_escape_as_other_errors(data):
    """Random byte damage to real files: an RGB image or an ImageError, never anything else."""
    fmt = data.draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]))
    raw = bytearray(encode(noise(24, 16, seed=3), fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    try:
        img = decode_image(bytes(raw[:cut]))
    except ImageError as e:
        assert e.reason in {"truncated", "unreadable", "not_an_image", "too_small", "too_many_pixels",
                            "extreme_aspect_ratio"}
    else:
        assert img.mode == "RGB"


# --- more of the same kinds: wide colour, animation and metadata in other containers -------------


def _png_16bit(pixels: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit-per-channel PNG (colour type 2 = RGB, 6 = RGBA) written with zlib; PIL cannot write these."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))
    return crafted_png(w, h, bit_depth=16, colour_type=colour_type, idat=zlib.compress(raw))


def test_16_bit_rgb_and_rgba_pngs():
    rgb = np.zeros((12, 20, 3), dtype=np.uint16)
    rgb[..., 0] = 65535  # full red
    rgb[:, 10:, 2] = 32896  # right half: + mid blue
    img = decode_image(_png_16bit(rgb, colour_type=2))
    assert img.mode == "RGB" and img.size == (20, 12)
    assert img.getpixel((2, 2)) == (255, 0, 0) and abs(img.getpixel((15, 2))[2] - 128) <= 1
    rgba = np.zeros((12, 20, 4), dtype=np.uint16)
    rgba[..., 1] = 65535  # green, fully transparent on the left, opaque on the right
    rgba[:, 10:, 3] = 65535
    img = decode_image(_png_16bit(rgba, colour_type=6))
    assert img.getpixel((2, 2)) == (255, 255, 255) and img.getpixel((15, 2)) == (0, 255, 0)


def test_animated_png_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((0, 0, 255), (255, 0, 0))]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert decode_image(data).getpixel((8, 8)) == (0, 0, 255)


def test_cmyk_and_16_bit_tiffs():
    img = decode_image(encode(Image.new("CMYK", (16, 16), (255, 0, 255, 0)), "TIFF"))
    assert img.mode == "RGB" and img.getpixel((4, 4)) == (0, 255, 0)
    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1)))
    out = np.asarray(decode_image(encode(ramp, "TIFF")))
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255


def test_exif_rotation_in_a_png_and_a_broken_exif_block():
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 3  # "rotate 180°"
    img = decode_image(encode(stored, "PNG", exif=exif))
    assert img.size == (40, 20) and img.getpixel((5, 10)) == (0, 0, 255)  # left is blue now
    # A JPEG whose APP1 "Exif" segment is garbage: the pixels are kept as stored.
    jpeg = encode(stored, "JPEG", quality=95)
    junk = b"Exif\0\0" + b"\xff\x13" * 40
    broken = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + jpeg[2:]
    img = decode_image(broken)
    assert img.size == (40, 20) and img.getpixel((5, 10))[0] > 200


def test_extensions_lie_both_ways(tmp_path):
    for name, fmt in (("jpeg_bytes.png", "JPEG"), ("gif_bytes.jpg", "GIF"), ("png_bytes.gif", "PNG")):
        path = tmp_path / name
        path.write_bytes(encode(noise(32, 24), fmt))
        img = decode_image(path)
        assert img.mode == "RGB" and img.size == (32, 24), name


def test_bomb_in_a_gif_header_is_refused_before_decoding():
    gif = encode(Image.new("P", (16, 16)), "GIF")
    huge = gif[:6] + struct.pack("<HH", 30000, 30000) + gif[10:]  # logical screen 30000x30000
    start = time.perf_counter()
    assert reason_of(huge) == "too_many_pixels"
    assert time.perf_counter() - start < 1.0
