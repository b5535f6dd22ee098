"""Decode one untrusted image into a clean RGB picture, or say exactly why not.

Every stage reads pixels through `decode_image`, so a web-scraped folder or a benchmark parquet
can hold anything (empty files, half-downloaded JPEGs, CMYK scans, 16-bit PNGs, animated GIFs,
decompression bombs) and what comes out is always a fully loaded, upright, RGB image of a sane
size, or an `ImageError` whose `.reason` is a short stable snake_case string that sources count:

    empty_file, missing_file, missing_data, unsupported_type, not_an_image, too_many_pixels,
    too_small, extreme_aspect_ratio, truncated, unreadable

Decisions, each a keyword argument with a module-level default:
- Bombs are refused from the header, before any pixel is decoded, when width*height exceeds
  `max_decode_pixels` (64 Mpx). PIL's global `Image.MAX_IMAGE_PIXELS` is neither read nor set
  (much VLM code sets it to None); if it is still set, PIL may refuse even earlier, and that is
  reported as `too_many_pixels` too.
- Images with a side under `min_side` = 8 px are refused (`too_small`): 1x1 tracking pixels and
  spacer GIFs carry nothing to ask a question about, and upscaling them to 512² is pure blur.
- Aspect ratios over `max_aspect` = 200 are refused (`extreme_aspect_ratio`): Qwen2.5-VL's
  `smart_resize` raises on them, which would crash a batch later instead of skipping one image.
- Only `formats` (JPEG, PNG, WEBP, BMP, GIF, TIFF) are opened: PIL would otherwise sniff EPS
  (which runs Ghostscript), PSD, ICNS, ... from the bytes whatever the file is called. The file
  extension is never trusted, so PNG bytes named .jpg decode fine.
- Truncation is detected by `.load()` unless other code set PIL's global
  `ImageFile.LOAD_TRUNCATED_IMAGES = True`; we do not touch that global either.
- A malformed EXIF block is ignored (the pixels stay as stored) rather than losing the image.

Test: `pytest tests/test_hostile_images.py tests/test_data.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_DECODE_PIXELS = 64 * 1024 * 1024
MIN_SIDE = 8
MAX_ASPECT = 200.0
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG includes phones' MPO files
#: Transparent pixels are composited onto this colour.
BACKGROUND = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageError(ValueError):
    """An image that cannot be used: `.reason` (stable snake_case key), `.where`, `.detail`."""

    def __init__(self, reason: str, message: str, where: str = "") -> None:
        self.reason = reason
        self.where = where
        self.detail = message
        super().__init__(f"{where}: {message}" if where else message)


def image_id(data_bytes: bytes) -> str:
    """Stable content id of the raw file bytes: same bytes, same id, wherever the file lives.

    >>> image_id(b"abc")
    'sha256:ba7816bf8f01cfea'
    """
    return "sha256:" + hashlib.sha256(data_bytes).hexdigest()[:16]


def decode_image(
    data: Any,
    *,
    where: str = "",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
    formats: tuple[str, ...] = FORMATS,
) -> Image.Image:
    """Decode `data` (bytes, a file path, a `{"bytes", "path"}` dict or a PIL image) to RGB.

    The result is fully loaded, EXIF-upright, first frame only, with transparency composited on
    white, and, if `min_pixels`/`max_pixels` are given, resized keeping its aspect ratio so that
    width*height lies in [min_pixels, max_pixels]. Raises `ImageError` for bad data, `ValueError`
    for a bad pixel range. The caller's PIL image or file is never modified.
    """
    check_pixel_range(min_pixels, max_pixels)
    _check_formats(formats)
    if isinstance(data, Image.Image):
        where = where or "<PIL image>"
        with _as_image_error(where, formats):  # a lazily opened image may still fail to load
            img = _checked_rgb(data, where, max_decode_pixels, min_side, max_aspect)
    else:
        source, where = _open_arg(data, where)
        img = _decode_opened(source, where, max_decode_pixels, min_side, max_aspect, formats)
    return resize_to_pixel_range(img, min_pixels, max_pixels)


def resize_to_pixel_range(
    img: Image.Image, min_pixels: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Scale `img` keeping its aspect ratio so width*height lands in [min_pixels, max_pixels].

    Images already in range are returned as they are. Downscaling rounds down and upscaling
    rounds up, so the bound that was crossed is met (unless a side would shrink below 1 px);
    the other one holds too unless the range is narrower than one row or column of pixels.
    """
    check_pixel_range(min_pixels, max_pixels)
    w, h = img.size
    area = w * h
    if max_pixels is not None and area > max_pixels:
        scale = math.sqrt(max_pixels / area)
        size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
    elif min_pixels is not None and area < min_pixels:
        scale = math.sqrt(min_pixels / area)
        size = (math.ceil(w * scale), math.ceil(h * scale))
    else:
        return img
    return img.resize(size, Image.Resampling.BICUBIC)


def check_pixel_range(min_pixels: int | None, max_pixels: int | None) -> None:
    """Raise `ValueError` unless both bounds are None or positive and min <= max."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive pixel count or None, got {value}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must be <= max_pixels ({max_pixels})")


def _check_formats(formats: tuple[str, ...]) -> None:
    Image.init()  # registers PIL's plugins once; reads, never changes, its settings
    unknown = [f for f in formats if f not in Image.OPEN]
    if unknown:
        raise ValueError(f"unknown image formats {unknown}; PIL can open {sorted(Image.OPEN)}")


def _open_arg(data: Any, where: str) -> tuple[io.BytesIO | Path, str]:
    """Turn any accepted input into bytes-in-memory or a readable file path, checked non-empty."""
    if isinstance(data, Mapping):
        raw, path = data.get("bytes"), data.get("path")
        if raw is not None:
            return _open_arg(raw, where or str(path or ""))
        if path:
            return _open_arg(path, where)
        raise ImageError("missing_data", "image entry has neither bytes nor a path", where)
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise ImageError("empty_file", "no image bytes (0 bytes)", where)
        return io.BytesIO(bytes(data)), where
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        where = where or str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError("missing_file", f"no such file: {path}", where) from None
        except OSError as e:
            raise ImageError("unreadable", f"cannot stat {path}: {e}", where) from e
        if not path.is_file():
            raise ImageError("unreadable", f"not a regular file: {path}", where)
        if size == 0:
            raise ImageError("empty_file", "file is empty (0 bytes)", where)
        return path, where
    raise ImageError("unsupported_type", f"cannot read an image from a {type(data).__name__}", where)


def _decode_opened(
    source: io.BytesIO | Path,
    where: str,
    max_decode_pixels: int,
    min_side: int,
    max_aspect: float,
    formats: tuple[str, ...],
) -> Image.Image:
    with _as_image_error(where, formats):
        # Image.open reads only the header; pixels are decoded by load() inside _checked_rgb.
        with Image.open(source, formats=list(formats)) as img:
            return _checked_rgb(img, where, max_decode_pixels, min_side, max_aspect)
    raise AssertionError("unreachable")  # pragma: no cover - keeps type checkers content


@contextlib.contextmanager
def _as_image_error(where: str, formats: tuple[str, ...]) -> Iterator[None]:
    """Turn whatever PIL raises on bad data into an `ImageError` with a reason."""
    try:
        yield
    except ImageError:
        raise
    except UnidentifiedImageError:
        allowed = ", ".join(formats)
        raise ImageError("not_an_image", f"not a recognised image (allowed: {allowed})", where) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_many_pixels", f"refused by PIL's bomb guard: {e}", where) from e
    except MemoryError:
        raise
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, EOFError, struct.error, ...
        reason = "truncated" if isinstance(e, EOFError) or "truncated" in str(e).lower() else "unreadable"
        raise ImageError(reason, f"cannot decode: {type(e).__name__}: {e}", where) from e


def _checked_rgb(
    img: Image.Image, where: str, max_decode_pixels: int, min_side: int, max_aspect: float
) -> Image.Image:
    """Header checks (size, shape), then decode, then normalise. Never modifies `img`."""
    w, h = img.size
    if w * h > max_decode_pixels:
        raise ImageError(
            "too_many_pixels",
            f"image is {w}x{h} = {w * h:,} pixels, over the {max_decode_pixels:,}-pixel decode "
            "limit (pass a larger max_decode_pixels if this is intended)",
            where,
        )
    if min(w, h) < max(min_side, 1):
        raise ImageError("too_small", f"image is {w}x{h}, smaller than {min_side} px on a side", where)
    if max(w, h) / min(w, h) > max_aspect:
        raise ImageError("extreme_aspect_ratio", f"image is {w}x{h}, aspect ratio over {max_aspect:g}", where)
    img.load()  # a freshly opened animation sits on its first frame; a caller's image keeps its own
    return _to_rgb(_upright(img))


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - broken metadata must not cost the image
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode: wide integers rescaled, float scaled, alpha composited on white."""
    if img.mode in _WIDE_INT_MODES or img.mode == "F":
        img = _wide_to_l(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")  # a copy even when already RGB: callers own what they get


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey to 8-bit, by range rather than PIL's clipping convert."""
    arr = np.asarray(img)
    if img.mode == "F":
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
        out = np.nan_to_num(arr.astype(np.float64) * scale)
    elif img.mode.startswith("I;16") or (arr.size and int(arr.max()) > 255):
        out = arr.astype(np.float64) / 257.0  # 65535 -> 255
    else:
        out = arr.astype(np.float64)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
