"""The loop's two sampling stages, questions and labels: their inputs, samplers and per-chunk work.

Both run in durable chunks (`visplay.evolve.chunks`), here in the loop's process or, with
``hardware.generation_shards`` > 1, as shard workers (`visplay.evolve.worker shard`) that call the
same `stage_items`, `open_stage_samplers` and `chunk_fn`; chunk i samples with the stage's seed +
``CHUNK_SEED_STRIDE * i`` (`visplay.evolve.seeds`), so the rows do not depend on where a crash
happened or how many shards ran. Who labels is the committee's (`visplay.evolve.committee`); what
a row holds is `visplay.evolve.rows`'s. Test: `pytest tests/test_shards.py tests/test_evolve.py`.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pyarrow.parquet as pq

from visplay.evolve import committee
from visplay.evolve.chunks import run_chunked
from visplay.evolve.context import Context, stage_params, take_images
from visplay.evolve.launch import run_sharded_stage
from visplay.evolve.rows import generate_questions, label_questions, question_key
from visplay.evolve.seeds import CHUNK_SEED_STRIDE
from visplay.sampling.factory import open_sampler


def item_id(item) -> str:
    return item.id


def row_image_id(row: dict) -> str:
    return row["image_id"]


#: kind -> (key of an input item, key of an output row): how chunk parts are checked and merged.
CHUNK_KEYS = {"questions": (item_id, row_image_id), "labels": (question_key, question_key)}


def stage_items(ctx: Context, kind: str) -> list:
    """The inputs of a sampling stage: unseen images (questions) or the question rows (labels)."""
    if kind == "questions":
        return take_images(ctx, ctx.cfg.evolve.images_per_iteration, replay=True)[0]
    return pq.read_table(ctx.run.output(ctx.name("questions"))).to_pylist()


@contextlib.contextmanager
def open_stage_samplers(ctx: Context, kind: str, sampler_cfg=None, log=None, device: str | None = None):
    """Who samples in a sampling stage: the new questioner Q_t (questions), or the committee (labels)."""
    if kind == "labels":
        with committee.open_samplers(ctx, sampler_cfg, log, device) as samplers:
            yield samplers
        return
    with open_sampler(sampler_cfg or ctx.cfg.sampler, ctx.model("questioner", ctx.t), ctx.cfg.dtype,
                      log_path=log, device=device) as sampler:
        yield sampler


def chunk_fn(ctx: Context, kind: str, sampler):
    """``fn(chunk, chunk_index) -> rows`` of a sampling stage (each chunk its own seed)."""
    ev, sample = ctx.cfg.evolve, stage_params(ctx.cfg, ctx.t)
    if kind == "questions":
        return lambda chunk, i: generate_questions(sampler, chunk, ev.questions_per_image,
                                                   replace(sample, seed=sample.seed + CHUNK_SEED_STRIDE * i),
                                                   lambda index, rung=ctx.rung(): ctx.cfg.scene_world(rung, index))
    return lambda chunk, i: label_questions(sampler, chunk, ev.label_samples,
                                            replace(sample, seed=sample.seed + CHUNK_SEED_STRIDE * i), ctx.grader,
                                            ev.band(ctx.t), ev.agreement)


def run_stage(ctx: Context, kind: str, items) -> list[dict]:
    """The rows of a sampling stage: in shard workers (one per GPU) or here, in durable chunks."""
    stage, (key, row_key) = ctx.name(kind), CHUNK_KEYS[kind]
    if ctx.cfg.hardware.generation_shards > 1 and ctx.cfg.sampler.in_process:
        return run_sharded_stage(ctx.cfg, ctx.run, stage, items, key, row_key)
    with open_stage_samplers(ctx, kind, log=ctx.run.log_path(stage, "server")) as sampler:
        return run_chunked(ctx.run.parts(stage), items, ctx.cfg.evolve.chunk_size, chunk_fn(ctx, kind, sampler),
                           desc=ctx.name(kind).replace("/", " "), key=key, row_key=row_key)
