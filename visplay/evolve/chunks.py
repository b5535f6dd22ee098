"""Chunked stage outputs: a long stage writes one parquet part per chunk, atomically, as it goes.

A resumed stage reads the parts that exist and computes only the missing ones, so a crash loses
at most one chunk of work; the parts are merged into the stage's output file at the end. Each
chunk gets its own sampling seed, so the result does not depend on where a crash happened.

The durable record of what the parts are parts *of* is ``plan.json`` (item count, chunk size and
a hash of the item keys), written before the first part. Parts under a different plan (the items
changed) are discarded rather than mixed in; a part that does not read back (or holds rows of
other items) is recomputed. Test: `pytest tests/test_reliability.py -k chunk`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from visplay.io import atomic_write_json, atomic_write_parquet
from visplay.console import bar_disable

PLAN = "plan.json"


def _plan(keys: Sequence[str], size: int) -> dict:
    digest = hashlib.sha256("\n".join(keys).encode("utf-8", "surrogatepass")).hexdigest()
    return {"items": len(keys), "chunk_size": size, "keys_sha256": digest}


def _read_plan(parts_dir: Path) -> dict | None:
    try:
        return json.loads((parts_dir / PLAN).read_text())
    except (OSError, ValueError):
        return None


def _read_part(part: Path, chunk_keys: list[str] | None, row_key: Callable[[dict], str] | None) -> list[dict] | None:
    """The part's rows, or None when it is unreadable or belongs to other items."""
    try:
        rows = pq.read_table(part).to_pylist()
    except Exception:  # noqa: BLE001 - arrow raises several types for a damaged file; recompute it
        return None
    if chunk_keys is not None and row_key is not None and sorted(set(map(row_key, rows))) != sorted(set(chunk_keys)):
        return None
    return rows


def run_chunked(parts_dir: Path, items: Sequence, size: int, fn: Callable[[Sequence, int], list[dict]],
                desc: str | None = None, key: Callable[[object], str] | None = None,
                row_key: Callable[[dict], str] | None = None) -> list[dict]:
    """``fn(chunk, chunk_index) -> rows`` over ``items`` in chunks of ``size``; parts are reused.

    ``key(item)`` names an item (default: its position); ``row_key(row)`` names the item a row
    came from, so a part can be checked against its chunk. Shows a progress bar (items done,
    rate, ETA) when ``desc`` is given."""
    from tqdm.auto import tqdm

    keys = [str(key(it)) if key else str(i) for i, it in enumerate(items)]
    plan = _plan(keys, size)
    if _read_plan(parts_dir) != plan:
        shutil.rmtree(parts_dir, ignore_errors=True)  # parts of other items (or none yet)
        atomic_write_json(parts_dir / PLAN, plan)
    rows: list[dict] = []
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=True if desc is None else bar_disable(), leave=False)
    for index, start in enumerate(range(0, len(items), size)):
        part = parts_dir / f"{index:05d}.parquet"
        chunk = items[start : start + size]
        done = _read_part(part, keys[start : start + size] if key else None, row_key) if part.is_file() else None
        if done is None:
            done = fn(chunk, index)
            atomic_write_parquet(part, done)
        rows += done
        bar.update(len(chunk))
    bar.close()
    return rows
