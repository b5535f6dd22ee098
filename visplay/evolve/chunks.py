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


def run_chunked(parts_dir: Path, items: Sequence, size: int, fn: Callable[[Sequence, int], list[dict]],
                desc: str | None = None) -> list[dict]:
    """``fn(chunk, chunk_index) -> rows`` over ``items`` in chunks of ``size``; parts are reused.

    Shows a progress bar (items done, rate, ETA) when ``desc`` is given."""
    from tqdm.auto import tqdm

    parts_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=desc is None, leave=False)
    for index, start in enumerate(range(0, len(items), size)):
        part = parts_dir / f"{index:05d}.parquet"
        chunk = items[start : start + size]
        if part.is_file():
            rows += pq.read_table(part).to_pylist()
        else:
            out = fn(chunk, index)
            atomic_write_parquet(part, out)
            rows += out
        bar.update(len(chunk))
    bar.close()
    return rows
