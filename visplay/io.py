"""Atomic file output: write to a temp file in the same folder, fsync, rename, fsync the folder.

A crash (SIGKILL, OOM, power loss) leaves either the old file or the new one, never half of one;
directories of files (model outputs) are written to a temp folder and renamed the same way
(`atomic_dir`). A failed write (disk full, read-only folder) raises `WriteError`, which names the
file and the cause, and leaves the old file untouched. Temp names are `.NAME.XXXX.tmp` (files)
and `NAME.tmp` (folders), so a run directory can sweep what a killed process left
(`stale_temps`). Inputs are never opened for writing anywhere in visplay; all outputs go here.
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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def atomic_write_parquet(path: str | Path, rows: list[dict]) -> Path:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
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
        for root, _, files in os.walk(tmp):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
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
