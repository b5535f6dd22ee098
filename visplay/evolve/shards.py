"""Data-parallel generation and labeling: each rank takes every world-th item, writes its own parts, merge by key.

    rows = run_shard(parts_dir, items, ranks, chunk_size, fn)        # on every rank
    barrier(ranks)
    merged = gather_shards(parts_dir, items, ranks.world, chunk_size, item_key, row_key)   # on the main rank

Rank r of w handles ``items[r::w]`` in chunks through `run_chunked`, so a rank that crashes
loses at most one chunk and resumes from its own parts, in ``parts_dir/rank<r>-of-<w>/``. Chunk
``i`` of rank ``r`` is passed to ``fn`` as global chunk ``i * w + r``, so no two chunks anywhere
share a sampling seed. One process (w == 1) keeps the plain layout ``parts_dir/NNNNN.parquet``.
`gather_shards` checks every rank finished (all its parts exist), then orders the rows by their
item's position in the unsharded ``items`` (stable, so the rows of one item keep their order) and
refuses rows whose key no item has, or items that produced no row. The functions are pure apart
from the parts files, so two "ranks" can be run one after the other in a test.
Test: `pytest tests/test_shards.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from visplay.dist import Ranks
from visplay.evolve.chunks import run_chunked


class ShardError(RuntimeError):
    pass


def shard(items: Sequence, rank: int, world: int) -> list:
    """The items rank ``rank`` of ``world`` handles: those whose index % world == rank."""
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank} of {world}")
    return list(items[rank::world])


def shard_dir(parts_dir: Path, rank: int, world: int) -> Path:
    return Path(parts_dir) if world == 1 else Path(parts_dir) / f"rank{rank:05d}-of-{world:05d}"


def run_shard(parts_dir: Path, items: Sequence, ranks: Ranks, size: int, fn: Callable[[Sequence, int], list[dict]],
              desc: str | None = None, **chunked) -> list[dict]:
    """This rank's share of a chunked stage (its rows, in its items' order); ``chunked`` goes to
    `run_chunked` (``key``/``row_key`` to check parts against their chunk)."""
    world, rank = ranks.world, ranks.rank
    mine = shard(items, rank, world)
    return run_chunked(shard_dir(parts_dir, rank, world), mine, size, lambda chunk, i: fn(chunk, i * world + rank),
                       desc, **chunked)


def gather_shards(parts_dir: Path, items: Sequence, world: int, size: int, item_key: Callable[[object], Hashable],
                  row_key: Callable[[dict], Hashable]) -> list[dict]:
    """All ranks' rows, in the order of ``items``; `ShardError` if a rank is unfinished or rows do not match."""
    position: dict[Hashable, int] = {}
    for i, item in enumerate(items):
        position.setdefault(item_key(item), i)
    rows: list[dict] = []
    for rank in range(world):
        folder = shard_dir(parts_dir, rank, world)
        expected = math.ceil(len(shard(items, rank, world)) / size)
        parts = [folder / f"{i:05d}.parquet" for i in range(expected)]
        missing = [p.name for p in parts if not p.is_file()]
        if missing:
            raise ShardError(f"rank {rank} of {world} has not finished: {len(missing)} of {expected} parts missing in "
                             f"{folder} (first: {missing[0]}); rerun that rank")
        for p in parts:
            rows += pq.read_table(p).to_pylist()
    unknown = [row_key(r) for r in rows if row_key(r) not in position]
    if unknown:
        raise ShardError(f"{len(unknown)} rows in {parts_dir} belong to no item of this stage (e.g. {unknown[0]!r}); "
                         "were the parts written by another run?")
    produced = {row_key(r) for r in rows}
    silent = [k for k in position if k not in produced]
    if silent:
        raise ShardError(f"{len(silent)} items produced no row (e.g. {silent[0]!r})")
    return sorted(rows, key=lambda r: position[row_key(r)])
