"""Chunked stage outputs: a long stage writes one parquet part per chunk, atomically, as it goes.

A resumed stage reads the parts that exist and computes only the missing ones, so a crash loses
at most one chunk of work; the parts are merged into the stage's output file at the end. Each
chunk gets its own sampling seed, so the result does not depend on where a crash happened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from visplay.io import atomic_write_parquet


def run_chunked(parts_dir: Path, items: Sequence, size: int, fn: Callable[[Sequence, int], list[dict]]) -> list[dict]:
    """``fn(chunk, chunk_index) -> rows`` over ``items`` in chunks of ``size``; parts are reused."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for index, start in enumerate(range(0, len(items), size)):
        part = parts_dir / f"{index:05d}.parquet"
        if part.is_file():
            rows += pq.read_table(part).to_pylist()
            continue
        out = fn(items[start : start + size], index)
        atomic_write_parquet(part, out)
        rows += out
    return rows
