"""Streaming image sources: the procedural world, a folder of files, or parquet (Vision-SR1 layout).

Every stage reads images through one interface, `ImageSource`: iterate it to get `ImageItem`s
(id, RGB image, origin) in a deterministic order, one at a time, never the whole set in memory.
Bad items never stop a run: each is skipped with a logged warning naming its file/row and counted
in `source.skipped[reason]` (reasons are `ImageError.reason`s plus `file_too_large`, `not_a_file`
(FIFOs, devices, sockets: never opened, so a FIFO cannot hang a run), `out_of_memory`, `empty_row`,
`bad_cell`, `outside_source_root`, `unsupported_type` and `unreadable_parquet`). Only regular
files are read, at most `MAX_FILE_BYTES + 1` bytes each. `skipped` is cleared when a new pass starts, so it describes the
latest pass. Sources open their inputs read-only and never write, move or delete them.

    src = open_source("folder:/data/photos", max_pixels=2048 * 2048)
    for item in skip_seen(src, used_ids):   # used_ids: ids consumed by earlier iterations
        ...

Ids are content hashes (`image_id` of the raw bytes) for files and parquet cells, so copies of a
file share an id wherever they live, and the scene id ("world/unlabeled/12") for the world.
Misconfiguration (missing folder, no images, no parquet files, missing column) raises
`ValueError` at construction, before any model is loaded or any item is yielded.

Test: `pytest tests/test_data.py tests/test_hostile_images.py`.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from visplay.data.images import ImageError, check_pixel_range, decode_image, image_id, resize_to_pixel_range
from visplay.worlds.scene import SPLITS, WorldConfig, make_scene
from visplay.worlds.trace import scene_id

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
#: Files larger than this are skipped unread (`file_too_large`): no sane training image is 256 MiB.
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Parquet rows decoded per batch; image rows are large, so keep batches small.
PARQUET_BATCH_ROWS = 16


@dataclass(frozen=True)
class ImageItem:
    id: str  # stable: content hash for files/parquet; the scene id for the world
    image: Image.Image  # RGB, resized into the pixel range
    origin: str  # "path/to/file.png", "data.parquet#row=17" or "world/unlabeled/12"


class SkipCounts(Counter):
    """reason -> count, plus `first`: the first few skips as "origin (reason): why", for error messages."""

    KEEP = 5

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.first: list[str] = []

    def clear(self) -> None:
        super().clear()
        self.first = []


@runtime_checkable
class ImageSource(Protocol):
    skipped: Counter[str]  # reason -> count, filled while iterating

    def __iter__(self) -> Iterator[ImageItem]: ...


def skip_seen(source: Iterable[ImageItem], seen_ids: set[str] | frozenset[str]) -> Iterator[ImageItem]:
    """Items whose id is not in `seen_ids`, each id at most once. `seen_ids` is not modified."""
    yielded: set[str] = set()
    for item in source:
        if item.id in seen_ids or item.id in yielded:
            continue
        yielded.add(item.id)
        yield item


@dataclass
class WorldSource:
    """Rendered scenes `start, start+1, ...` of a world split; infinite when `count` is None.

    The world is drawn so one grid cell is one vision token at native size, so leave
    min_pixels/max_pixels at None for it unless you mean to change that.
    """

    world_config: WorldConfig = field(default_factory=WorldConfig)
    split: str = "unlabeled"
    start: int = 0
    count: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    skipped: Counter[str] = field(default_factory=SkipCounts, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown world split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.start < 0:
            raise ValueError(f"world start must be >= 0, got {self.start}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"world count must be >= 0 or None (endless), got {self.count}")
        check_pixel_range(self.min_pixels, self.max_pixels)

    def __iter__(self) -> Iterator[ImageItem]:
        self.skipped.clear()
        indices: Iterable[int] = (
            itertools.count(self.start) if self.count is None else range(self.start, self.start + self.count)
        )
        for index in indices:
            scene = make_scene(self.split, index, self.world_config)
            image = resize_to_pixel_range(scene.render(), self.min_pixels, self.max_pixels)
            yield ImageItem(id=scene_id(scene), image=image, origin=scene_id(scene))


@dataclass
class FolderSource:
    """Image files under `path`, recursively, in sorted relative-path order.

    Files are picked by extension (jpg, jpeg, png, webp, bmp, gif; any case) but decoded by
    content. Hidden files and folders (".name", e.g. macOS "._x.jpg" resource forks, .git,
    .ipynb_checkpoints) are left out; symlinked folders are not followed (no loops). The file
    list is taken at construction, which raises `ValueError` if it is empty.
    """

    path: str | os.PathLike[str]
    min_pixels: int | None = None
    max_pixels: int | None = None
    skipped: Counter[str] = field(default_factory=SkipCounts, init=False, repr=False)
    files: tuple[Path, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        root = Path(self.path).expanduser()
        if not root.is_dir():
            raise ValueError(f"image folder {root} does not exist or is not a directory")
        check_pixel_range(self.min_pixels, self.max_pixels)
        self.files = tuple(root / rel for rel in _list_images(root))
        if not self.files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise ValueError(f"no images found in {root} (looked recursively for {exts})")

    def __iter__(self) -> Iterator[ImageItem]:
        self.skipped.clear()
        for path in self.files:
            item = _decode_item(path, str(path), self.skipped, self.min_pixels, self.max_pixels)
            if item is not None:
                yield item


def _list_images(root: Path) -> list[Path]:
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(folder).relative_to(root)
        found += [base / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda p: p.as_posix())


@dataclass
class ParquetSource:
    """Images in one column of a parquet file, or of every `*.parquet` directly in a folder (sorted).

    Each cell is a list of images or a single image; an image is a `{"bytes", "path"}` struct
    (HF datasets' Image feature; bytes win when both are set), raw bytes, or a path string,
    relative paths being relative to the parquet file's folder. Path strings must resolve inside
    the source's root (the folder given, or the parquet file's folder), so a row holding
    "../../etc/passwd" is skipped (`outside_source_root`) unless `allow_outside_root=True`.
    A struct whose `bytes` field is not binary (a str) is `bad_cell`, a skip of that row. Other columns (the Vision-SR1 /
    benchmark `problem`, `answer`) are never read. Origins are "file.parquet#row=N" (row within
    that file), with "&image=K" added when a row holds more than one image. Rows are read
    `PARQUET_BATCH_ROWS` at a time, so memory is bounded by one row group of the file.
    """

    path: str | os.PathLike[str]
    column: str = "images"
    min_pixels: int | None = None
    max_pixels: int | None = None
    allow_outside_root: bool = False  # opt in to path strings that point outside the source's folder
    skipped: Counter[str] = field(default_factory=SkipCounts, init=False, repr=False)
    files: tuple[Path, ...] = field(default=(), init=False, repr=False)
    root: Path = field(default=Path(), init=False, repr=False)

    def __post_init__(self) -> None:
        check_pixel_range(self.min_pixels, self.max_pixels)
        path = Path(self.path).expanduser()
        self.files = _parquet_files(path)
        self.root = (path if path.is_dir() else path.parent).resolve()
        for file in self.files:
            columns = _schema(file).names
            if self.column not in columns:
                raise ValueError(
                    f"{file} has no column {self.column!r}; its columns are {', '.join(columns)} "
                    "(pass column=... to pick the image column)"
                )

    def __iter__(self) -> Iterator[ImageItem]:
        self.skipped.clear()
        for file in self.files:
            for row, cell in _cells(file, self.column, self.skipped):
                yield from self._row_items(file, row, cell)

    def _row_items(self, file: Path, row: int, cell: Any) -> Iterator[ImageItem]:
        images = cell if isinstance(cell, list) else [] if cell is None else [cell]
        if not images:
            _skip(self.skipped, "empty_row", f"{file}#row={row}", "no image in this row")
        for k, value in enumerate(images):
            origin = f"{file}#row={row}" + (f"&image={k}" if len(images) > 1 else "")
            if isinstance(value, dict):  # HF Image struct: bytes win, else the path
                raw, ref = value.get("bytes"), value.get("path")
                if raw is not None and not isinstance(raw, (bytes, bytearray, memoryview)):
                    _skip(self.skipped, "bad_cell", origin, f"the struct's bytes field holds a {type(raw).__name__}, "
                          "not binary image data")
                    continue
                value = raw if raw is not None else ref
            if value is None or value == "":
                _skip(self.skipped, "missing_data", origin, "image entry has neither bytes nor a path")
                continue
            if isinstance(value, str):
                path = (file.parent / value).resolve()
                if not self.allow_outside_root and not path.is_relative_to(self.root):
                    _skip(self.skipped, "outside_source_root", origin,
                          f"path {value!r} resolves to {path}, outside {self.root} (allow_outside_root=True to read it)")
                    continue
                item = _decode_item(path, origin, self.skipped, self.min_pixels, self.max_pixels)
            elif isinstance(value, (bytes, bytearray, memoryview)):
                item = _decode_bytes(bytes(value), origin, self.skipped, self.min_pixels, self.max_pixels)
            else:
                item = _skip(self.skipped, "unsupported_type", origin,
                             f"image cell holds a {type(value).__name__}, not image bytes or a path")
            if item is not None:
                yield item


def _parquet_files(path: Path) -> tuple[Path, ...]:
    if path.is_dir():
        files = tuple(sorted((p for p in path.glob("*.parquet") if p.is_file()), key=lambda p: p.name))
        if not files:
            raise ValueError(f"no parquet files found in {path} (looked for *.parquet directly inside)")
        return files
    if not path.is_file():
        raise ValueError(f"parquet path {path} does not exist")
    return (path,)


def _schema(file: Path) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{file} is not a readable parquet file: {e}") from e


def _cells(file: Path, column: str, skipped: Counter[str]) -> Iterator[tuple[int, Any]]:
    """(row number within the file, python value of the cell), streamed in small batches."""
    row = 0
    try:
        with pq.ParquetFile(file) as pf:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[column]):
                for cell in batch.column(0).to_pylist():
                    yield row, cell
                    row += 1
    except (pa.ArrowException, OSError) as e:
        _skip(skipped, "unreadable_parquet", f"{file}#row={row}", f"rest of the file unreadable: {e}")


def _decode_item(
    path: Path, origin: str, skipped: Counter[str], min_pixels: int | None, max_pixels: int | None
) -> ImageItem | None:
    """Read a regular file's bytes (for the content id) and decode them; None (counted) when unusable.

    FIFOs, devices and sockets (also behind a symlink, e.g. to /dev/zero) are never read: a FIFO
    would block forever and a device would fill memory. The file is opened non-blocking and checked
    again on the open descriptor (it may have been swapped since the stat), and at most
    `MAX_FILE_BYTES + 1` bytes are read whatever the file claims its size is.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return _skip(skipped, "not_a_file", origin, f"{path} is {_file_kind(st.st_mode)}, not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            return _skip(skipped, "file_too_large", origin, f"{st.st_size:,} bytes, over {MAX_FILE_BYTES:,}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                return _skip(skipped, "not_a_file", origin, f"{path} is {_file_kind(mode)}, not a regular file")
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return _skip(skipped, "file_too_large", origin, f"over {MAX_FILE_BYTES:,} bytes (it grew while read)")
    except FileNotFoundError:
        return _skip(skipped, "missing_file", origin, f"no such file: {path}")
    except OSError as e:
        return _skip(skipped, "unreadable", origin, f"cannot read {path}: {e}")
    except MemoryError:
        return _skip(skipped, "out_of_memory", origin, f"not enough memory to read {path}")
    return _decode_bytes(raw, origin, skipped, min_pixels, max_pixels)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _decode_bytes(
    raw: bytes, origin: str, skipped: Counter[str], min_pixels: int | None, max_pixels: int | None
) -> ImageItem | None:
    try:
        image = decode_image(raw, where=origin, min_pixels=min_pixels, max_pixels=max_pixels)
    except ImageError as e:
        return _skip(skipped, e.reason, origin, e.detail)
    except MemoryError:
        return _skip(skipped, "out_of_memory", origin, "not enough memory to decode it")
    return ImageItem(id=image_id(raw), image=image, origin=origin)


def _skip(skipped: Counter[str], reason: str, origin: str, message: str) -> None:
    skipped[reason] += 1
    first = getattr(skipped, "first", None)
    if first is not None and len(first) < SkipCounts.KEEP:
        first.append(f"{origin} ({reason}): {message}")
    logger.warning("skipping %s (%s): %s", origin, reason, message)
    return None


def open_source(spec: str, *, world_config: WorldConfig | None = None, **kw: Any) -> ImageSource:
    """Build a source from "world:SPLIT", "folder:PATH", "parquet:PATH" or a bare path.

    A bare folder is a parquet source if it directly holds *.parquet files, else an image
    folder; a bare file must end in .parquet. `world_config` is used by world specs and ignored
    by the others (a pipeline config always has one); every other keyword goes to the source's
    constructor (min_pixels, max_pixels, column, start, count).
    """
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("folder", "parquet") and not rest:
        raise ValueError(f"image source {spec!r} names no path; write e.g. '{kind}:/data/images'")
    if sep and kind == "world":
        return WorldSource(world_config or WorldConfig(), rest or "unlabeled", **kw)
    if sep and kind == "folder":
        return FolderSource(rest, **kw)
    if sep and kind == "parquet":
        return ParquetSource(rest, **kw)
    if spec == "world":
        return WorldSource(world_config or WorldConfig(), **kw)
    path = Path(spec).expanduser()
    if path.is_dir():
        has_parquet = any(p.is_file() for p in path.glob("*.parquet"))
        return ParquetSource(path, **kw) if has_parquet else FolderSource(path, **kw)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return ParquetSource(path, **kw)
    if path.exists():
        raise ValueError(f"cannot tell what kind of image source {spec!r} is; use folder:, parquet: or world:")
    raise ValueError(
        f"image source {spec!r} is neither an existing path nor a spec like "
        "'world:unlabeled', 'folder:/path' or 'parquet:/path/file.parquet'"
    )
