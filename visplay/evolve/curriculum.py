"""The label-free curriculum: the loop orders an unsorted pool of unlabeled images by a signal it
produces itself, and each iteration takes the easiest images it has not used yet.

Before the first iteration the base reasoner answers one fixed question about each of the first
`evolve.survey_images` unseen images, greedily (the *survey*). An image's difficulty is the length
of that answer in words: a model that reasons over what it sees writes longer chains for busier
images (on the world, Spearman 0.90 with the true object count: docs/experiments.md, session 15).
Nothing here reads a scene's level, object count or any oracle field, so a folder of photos and
the world are ordered by the same rule; the world's level is recorded beside each row for
measurement only, as in every other stage output.

The survey is written once, atomically, to `RunDir.survey_path` (its existence means it is
complete: a kill before then only repeats the survey on resume). Iteration t then takes the
unseen pool images in order of (difficulty, position in the source): as the easy images are used
up, the rounds climb. Test: `pytest tests/test_curriculum.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from visplay.data.sources import ImageItem
from visplay.io import atomic_write_parquet
from visplay.roles.prompts import reasoner_messages
from visplay.sampling.base import Prompt, Sampler, SamplingParams

#: The survey's one question: generic, so that it means the same on any image source.
SURVEY_QUESTION = "How many objects are there in the image?"


def difficulty(answer: str) -> int:
    """An answer's length in words: the survey's difficulty signal (longer chain, harder image).

    >>> difficulty("<think>a: a3 red -. b: none.</think>\\\\boxed{1}")
    6
    """
    return len(answer.split())


def survey(sampler: Sampler, items: Sequence[ImageItem], params: SamplingParams,
           level: Callable[[str], int | None] = lambda _: None) -> list[dict]:
    """One greedy answer to `SURVEY_QUESTION` per image; rows (image_id, position, difficulty, answer,
    level). ``level`` gives a world image's level for measurement only; nothing orders by it."""
    prompts = [Prompt(reasoner_messages(SURVEY_QUESTION), (it.image,)) for it in items]
    outs = sampler.generate(prompts, params) if prompts else []
    return [{"image_id": it.id, "position": i, "difficulty": difficulty(out[0]), "answer": out[0],
             "level": level(it.id)} for i, (it, out) in enumerate(zip(items, outs))]


def order(rows: Iterable[dict]) -> list[str]:
    """Image ids from easiest to hardest: by difficulty, ties in source order."""
    return [r["image_id"] for r in sorted(rows, key=lambda r: (r["difficulty"], r["position"]))]


def read_survey(path: str | Path) -> list[dict] | None:
    """The survey rows at ``path`` (`RunDir.survey_path`), or None before the survey has been written."""
    path = Path(path)
    return pq.read_table(path).to_pylist() if path.is_file() else None


def write_survey(path: str | Path, rows: list[dict]) -> Path:
    return atomic_write_parquet(path, rows)


def pool(source: Iterable[ImageItem], size: int) -> list[ImageItem]:
    """The survey's pool: the first ``size`` usable images of the source, in its order."""
    return list(itertools.islice(source, size))


def take_easiest(source: Iterable[ImageItem], rows: Sequence[dict], seen: set[str], n: int) -> list[ImageItem]:
    """The ``n`` easiest surveyed images not in ``seen``, easiest first: one pass over the source's
    first ``len(rows)`` images (the pool, in the order the survey saw it), keeping only those."""
    wanted = list(itertools.islice((i for i in order(rows) if i not in seen), n))
    rank = {image_id: k for k, image_id in enumerate(wanted)}
    found = sorted((rank[it.id], it) for it in itertools.islice(source, len(rows)) if it.id in rank)
    return [it for _, it in found]
