"""Atomic file output: write to a temp file in the same folder, fsync, rename, fsync the folder.

A crash (SIGKILL, OOM, power loss) leaves either the old file or the new one, never half of one;
directories of files (model outputs) are written to a temp folder and renamed the same way
(`atomic_dir`). A failed write (disk full, read-only folder) raises `WriteError`, which names the
file and the cause, and leaves the old file untouched. Temp names are `.NAME.XXXX.tmp` (files)
and `NAME.tmp` (folders), so a run directory can sweep what a killed process left
(`stale_temps`). Outputs get the mode a plain write would (0666 less the umask), not mkstemp's
0600. Inputs are never opened for writing anywhere in visplay; all outputs go here.
Test: `pytest tests/test_reliability.py`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TEMP_FILE = re.compile(r"\..+\.[^./]+\.tmp")  # mkstemp(prefix=".NAME.", suffix=".tmp")


class WriteError(OSError):
    """An output could not be written; ``str()`` names the file, the cause and (for a full disk) what to do."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        self.path = Path(path)
        hint = " (free some space, then rerun or --resume)" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, f"cannot write {self.path}: {reason}{hint}")

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (Linux: /proc; elsewhere set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0666 less the umask (0644 under 022).

    `tempfile.mkstemp` makes 0600 files, so every atomic write would otherwise be private to its
    owner (unreadable to a group sharing a cluster's run directory)."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        raise (e if isinstance(e, WriteError) else WriteError(path, e)) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


#: Columns of stage rows that hold an encoded image: stored as a `datasets.Image` feature.
IMAGE_COLUMNS = ("image_png",)


def image_bytes(cell: Any) -> bytes | None:
    """The encoded image of a cell read back from parquet: a `datasets.Image` struct or raw bytes."""
    if isinstance(cell, dict):
        return cell.get("bytes")
    return cell


def image_table(rows: list[dict], image_columns: tuple[str, ...] = IMAGE_COLUMNS):
    """``rows`` as an arrow table whose ``image_columns`` are `datasets.Image` columns.

    The cells become ``{"bytes", "path"}`` structs and the schema carries datasets' feature
    metadata, so ``datasets.load_dataset("parquet", ...)`` gives PIL images, not binary."""
    import pyarrow as pa

    present = [c for c in image_columns if rows and c in rows[0]]
    if not present:
        return pa.Table.from_pylist(rows)
    from datasets import Features, Image

    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k not in present} for r in rows])
    features = Features.from_arrow_schema(table.schema)
    order = list(rows[0])
    for col in present:
        cells = [None if r.get(col) is None else {"bytes": image_bytes(r[col]), "path": None} for r in rows]
        table = table.append_column(col, pa.array(cells, type=Image().pa_type))
        features[col] = Image()
    features = Features({c: features[c] for c in order})  # the rows' column order
    table = table.select(order)
    return table.replace_schema_metadata(features.arrow_schema.metadata)


def atomic_write_parquet(path: str | Path, rows: list[dict], image_columns: tuple[str, ...] = IMAGE_COLUMNS) -> Path:
    """Rows as parquet; ``image_columns`` (bytes or read-back structs) stored as a `datasets.Image`."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(image_table(rows, image_columns), buf)
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill a temp folder ``PATH.tmp`` inside the block; on success it is fsynced and renamed to ``path``.

    The old ``path`` (if any) is replaced; a crash inside the block leaves ``path`` as it was and a
    ``PATH.tmp`` that the next attempt (or `stale_temps`) removes. A full disk raises `WriteError`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise WriteError(tmp, e) from e
    try:
        yield tmp
        mode = file_mode()
        for root, _, files in os.walk(tmp):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fchmod(fd, mode)  # writers inside (safetensors shards) may have used 0600 temp files
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(root)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        fsync_dir(path.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise (e if isinstance(e, WriteError) else WriteError(path, e)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stale_temps(root: str | Path) -> list[Path]:
    """Temp files and folders under ``root`` left by writers that were killed mid-write."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if _TEMP_FILE.fullmatch(name):
                found.append(Path(dirpath, name))
        for name in list(dirnames):
            if name.endswith(".tmp"):
                found.append(Path(dirpath, name))
                dirnames.remove(name)
    return sorted(found)


def check_writable_dir(path: str | Path) -> Path:
    """Prove a file can be written where ``path`` is (or would be created), else `WriteError` naming it.

    Commands call this before their expensive work when they know the output folder up front, so a
    read-only or blocked destination fails in a second, not after an hour of sampling. Nothing is
    left behind: the probe is a temp file in the nearest existing folder, removed at once.
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:  # where the first mkdir would happen
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{probe} is not a directory")
        fd, tmp = tempfile.mkstemp(prefix=".visplay-probe.", suffix=".tmp", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise WriteError(path, e) from e
    return path
