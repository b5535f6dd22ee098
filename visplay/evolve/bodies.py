"""The body of each stage in `visplay.run.stages.STAGES`: ``run_<kind>(ctx) -> info``; `STEPS` pairs
each stage with its body.

The loop (`visplay.evolve.loop`) calls ``step.body(ctx)`` for every step in order and marks
the returned info done in the manifest; the launched workers (`visplay.evolve.worker`) call the
same pieces -- `train_phase` for a GRPO stage on every rank, `chunk_fn` / `stage_items` for one
shard of a chunked stage -- so each stage is written once. Everything a body needs comes from the
run directory (`RunDir` owns every path; models of earlier stages come from the manifest), so a
body runs the same in the loop, in a worker, and after a resume.
Test: `pytest tests/test_evolve.py tests/test_scale.py tests/test_shards.py`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.parquet as pq

from visplay.answers import Grader
from visplay.cards import dress_checkpoint
from visplay.config import REPLAY_START, WORLD_SEED_SCENES, Config
from visplay.data.sources import WorldSource, skip_seen
from visplay.dist import Ranks
from visplay.eval.world import evaluate_world, level_groups, write_eval
from visplay.evolve import curriculum
from visplay.evolve.chunks import run_chunked
from visplay.evolve.launch import WorkerError, launch_phase, run_member_workers, run_sharded_stage
from visplay.run.stages import BASELINE, BY_KIND, ITERATION_STAGES, Stage, stage_name
from visplay.evolve.preflight import committee_members, member_sampler, open_images
from visplay.run.rundir import RunDir
from visplay.evolve.stages import (
    generate_questions,
    world_scene,
    label_accuracy,
    label_questions,
    level_mix,
    question_key,
    questioner_dataset,
    reasoner_dataset,
    reasoner_rows,
    skip_reasons,
)
from visplay.io import atomic_write_parquet
from visplay.rewards.registry import build_rewards
from visplay.sampling.base import SamplingParams
from visplay.sampling.factory import for_rank, open_sampler
from visplay.models import finished_phase, load_model
from visplay.evolve.grpo import train_grpo
from visplay.evolve.sft import chain_rows, n_chains, train_sft

Say = Callable[[str], None]
#: Seed offsets, primes so that the streams they start never line up: chunk i of a chunked stage
#: samples with seed + CHUNK_SEED_STRIDE * i; rank r of a launched GRPO phase with + RANK_SEED_STRIDE * r.
CHUNK_SEED_STRIDE = 7919
RANK_SEED_STRIDE = 100003


@dataclass
class Context:
    """What a stage body gets: the run's config and directory, the iteration, a grader, a printer."""

    cfg: Config
    run: RunDir
    base: Path  # the base model both lineages start from
    t: int
    grader: Grader
    say: Say = print
    ranks: Ranks | None = field(default=None)  # set on every rank of a launched GRPO worker

    def name(self, kind: str) -> str:
        return BASELINE if self.t == 0 else stage_name(self.t, kind)

    def rung(self) -> int:
        """The ladder step iteration t stands on: t, or with `evolve.advance_kept_share` one more
        than the climbs so far -- an iteration climbs only when the labels stage kept at least that
        share of its own level's questions (label-free evidence that the level is learnt)."""
        share, rung = self.cfg.evolve.advance_kept_share, 1
        if share is None:
            return self.t
        for s in range(1, self.t):
            level = self.cfg.source_world_at(rung).min_objects
            mix = self.run.stage_info(stage_name(s, "labels")).get("by_level", {}).get(str(level), {})
            rung += bool(mix.get("valid")) and mix["kept"] / mix["valid"] >= share
        return rung

    def model(self, role: str, t: int) -> Path:
        """The ``role`` model (questioner | reasoner) after iteration ``t`` (0: the base model)."""
        if t == 0:
            return self.base
        stage = stage_name(t, role)
        model = self.run.stage_info(stage).get("model")
        if not self.run.is_done(stage) or not model:
            raise WorkerError(f"{stage} is not finished in {self.run.manifest_path}; iteration {self.t} needs it")
        return Path(model)


# -- inputs shared by the loop and the workers ------------------------------------------------------


def seen_ids(run: RunDir, upto: int) -> set[str]:
    """Ids of the images iterations 1..upto-1 asked questions about (never reused)."""
    seen: set[str] = set()
    for t in range(1, upto):
        seen.update(run.stage_info(stage_name(t, "questions")).get("image_ids", []))
    return seen


def take_images(ctx: Context, n: int, replay: bool = False):
    """The next ``n`` images of the source that no earlier iteration used, and the skip counts:
    in source order, or with `evolve.survey_images` the easiest unseen ones of the surveyed pool
    (`visplay.evolve.curriculum`); with ``replay``, then `evolve.replay_images` more from the
    levels below the ladder's level."""
    rung = ctx.rung()
    source = open_images(ctx.cfg, rung)
    seen = seen_ids(ctx.run, ctx.t)
    if ctx.cfg.evolve.survey_images:
        rows = curriculum.read_survey(ctx.run.root)
        if rows is None:
            raise WorkerError(f"{ctx.run.root / curriculum.SURVEY_FILE} is missing; the loop surveys the pool "
                              "before iteration 1 (visplay evolve --resume)")
        items = curriculum.take_easiest(curriculum.pool(source, ctx.cfg.evolve.survey_images), rows, seen, n)
    else:
        items = list(itertools.islice(skip_seen(source, seen), n))
    if not items:
        raise ValueError(f"image source {ctx.cfg.evolve.source} has no unseen images left for iteration {ctx.t}")
    below = ctx.cfg.replay_world_at(rung) if replay else None
    if below is not None:
        split = ctx.cfg.evolve.source.partition(":")[2] or "unlabeled"
        older = WorldSource(below, split, start=REPLAY_START + ctx.cfg.evolve.seed * WORLD_SEED_SCENES)
        items += list(itertools.islice(skip_seen(older, seen), ctx.cfg.evolve.replay_images))
    return items, dict(source.skipped)


def stage_params(cfg: Config, t: int) -> SamplingParams:
    """The sampling parameters of iteration ``t``'s generation and labeling stages."""
    return cfg.evolve.params(1, seed=cfg.evolve.seed + t)


def item_id(item) -> str:
    return item.id


def row_image_id(row: dict) -> str:
    return row["image_id"]


#: kind -> (key of an input item, key of an output row): how chunk parts are checked and merged.
CHUNK_KEYS = {"questions": (item_id, row_image_id), "labels": (question_key, question_key)}


def stage_items(ctx: Context, kind: str) -> list:
    """The inputs of a chunked stage: unseen images (questions) or the question rows (labels)."""
    if kind == "questions":
        return take_images(ctx, ctx.cfg.evolve.images_per_iteration, replay=True)[0]
    return pq.read_table(ctx.run.output(ctx.name("questions"))).to_pylist()


def chunk_models(ctx: Context, kind: str) -> list[Path | str]:
    """Who samples in a chunked stage: the new questioner (questions), or the labelling committee --
    the previous reasoner, then `evolve.committee`'s members (local dirs, or ``url=`` servers)."""
    if kind == "questions":
        return [ctx.model("questioner", ctx.t)]
    members = committee_members(ctx.cfg)
    if ctx.cfg.evolve.coevolve and ctx.t > 1:  # the members as the previous round trained them
        members = [Path(p) for p in ctx.run.stage_info(stage_name(ctx.t - 1, "reasoner")).get("committee", members)]
    return [ctx.model("reasoner", ctx.t - 1), *members]


@contextlib.contextmanager
def chunk_samplers(ctx: Context, kind: str, sampler_cfg=None, log=None, device: str | None = None):
    """The samplers of a chunked stage, open together: one (questions) or the committee (labels)."""
    base = sampler_cfg or ctx.cfg.sampler
    with contextlib.ExitStack() as stack:
        samplers = []
        for i, model in enumerate(chunk_models(ctx, kind)):
            cfg, where = member_sampler(base, model)
            member_log = None if log is None or not i else log.with_name(f"{log.stem}.member{i}{log.suffix}")
            samplers.append(stack.enter_context(
                open_sampler(cfg, where, ctx.cfg.dtype, log_path=member_log or log, device=device)))
        yield samplers[0] if kind == "questions" else samplers


def chunk_fn(ctx: Context, kind: str, sampler):
    """``fn(chunk, chunk_index) -> rows`` of a chunked stage (each chunk its own seed)."""
    ev, sample = ctx.cfg.evolve, stage_params(ctx.cfg, ctx.t)
    if kind == "questions":
        return lambda chunk, i: generate_questions(sampler, chunk, ev.questions_per_image,
                                                   replace(sample, seed=sample.seed + CHUNK_SEED_STRIDE * i),
                                                   lambda index, rung=ctx.rung(): ctx.cfg.scene_world(rung, index))
    return lambda chunk, i: label_questions(sampler, chunk, ev.label_samples,
                                            replace(sample, seed=sample.seed + CHUNK_SEED_STRIDE * i), ctx.grader,
                                            (ev.band_low, ev.band_high), ev.agreement)


def _sampler(ctx: Context, model_dir: Path, progress: bool = False, stage: str | None = None):
    """A stage's sampler (transformers in-process, or a server: docs/scaling.md); a launched server
    logs to ``<stage>.server.log`` in the run directory."""
    log = ctx.run.log_path(stage or ctx.name("eval"), "server")
    return open_sampler(ctx.cfg.sampler, model_dir, ctx.cfg.dtype, log_path=log, progress=progress)


def _chunked(ctx: Context, kind: str, items) -> list[dict]:
    """Rows of a chunked stage: in shard workers (one per GPU) or here, in durable chunks."""
    stage, (key, row_key) = ctx.name(kind), CHUNK_KEYS[kind]
    if ctx.cfg.hardware.generation_shards > 1 and ctx.cfg.sampler.in_process:
        return run_sharded_stage(ctx.cfg, ctx.run, stage, items, key, row_key)
    with chunk_samplers(ctx, kind, log=ctx.run.log_path(stage, "server")) as sampler:
        return run_chunked(ctx.run.parts(stage), items, ctx.cfg.evolve.chunk_size, chunk_fn(ctx, kind, sampler),
                           desc=ctx.name(kind).replace("/", " "), key=key, row_key=row_key)


# -- GRPO phases ------------------------------------------------------------------------------------


def reward_fns(ctx: Context, role: str, frozen=None, rank: int = 0) -> list:
    """The TRL rewards of a GRPO phase, from its config (built here only, for the loop and every
    worker rank; the questioner's frozen-reasoner samples get a seed per iteration and rank)."""
    ev = ctx.cfg.evolve
    # every sampling knob of the evolve section at once (temperature, top_k, top_p, max_new_tokens), so none is lost
    return build_rewards(getattr(ev, role).rewards, grader=ctx.grader, reasoner=frozen, m=ev.reward_samples,
                         **{**ev.knobs(), "seed": ev.seed + ctx.t + RANK_SEED_STRIDE * rank},
                         threshold=ev.diversity_threshold if ev.diversity_penalty else 1.0)


def phase_dataset(ctx: Context, role: str):
    """The GRPO rows of a phase: unseen images (questioner) or kept silver labels (reasoner)."""
    ev = ctx.cfg.evolve
    if role == "questioner":
        return questioner_dataset(take_images(ctx, ev.questioner_images)[0])
    label_col = "questioner_answer" if ev.labels == "questioner" else "label"
    return reasoner_dataset(reasoner_rows(ctx.run.root, ctx.t, ev.accumulate_labels), label_col)


def train_phase(ctx: Context, role: str, dataset=None) -> tuple[list[dict], str | None]:
    """Train iteration t's ``role`` from the previous one and save it; (log history, guard verdict).

    In the loop's process, or (``ctx.ranks`` set) on every rank of ``hardware.launcher``, where
    the frozen reasoner of the questioner's reward runs on the rank's own GPU."""
    import torch

    cfg, run, stage, ranks = ctx.cfg, ctx.run, ctx.name(role), ctx.ranks
    dataset = phase_dataset(ctx, role) if dataset is None else dataset
    if role == "questioner" and ranks is not None:
        device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else None
        frozen = open_sampler(for_rank(cfg.sampler, ranks.local_rank), ctx.model("reasoner", ctx.t - 1), cfg.dtype,
                              device=device, log_path=run.log_path(stage, f"rank{ranks.rank}.server"))
    elif role == "questioner":
        frozen = _sampler(ctx, ctx.model("reasoner", ctx.t - 1), stage=stage)
    else:
        frozen = contextlib.nullcontext()
    # fp32 master weights (bf16 autocast on GPU when cfg.dtype is bfloat16)
    model, processor = load_model(ctx.model(role, ctx.t - 1), dtype=torch.float32)
    main = ranks is None or ranks.main
    with frozen as sampler:
        rewards = reward_fns(ctx, role, sampler, ranks.rank if ranks else 0)
        _, history, guard = train_grpo(model, processor, dataset, rewards, getattr(cfg.evolve, role), run.output(stage),
                                       log_dir=run.tb_dir(stage),
                                       report_to=list(cfg.evolve.report_to) if main else [],
                                       bf16=cfg.dtype == "bfloat16", role=role, ranks=ranks)
    return history, guard


def logged_phase(ctx: Context, role: str, phase: tuple[list[dict], str | None]) -> str | None:
    """Record a finished GRPO phase (log history, guard verdict): history to metrics.jsonl; the verdict back."""
    stage, (history, guard) = ctx.name(role), phase
    for h in history:
        ctx.run.log({"stage": stage, **h})
    if guard:
        ctx.say(f"{stage}: health guard stopped the phase: {guard}")
    return guard


# -- the stage bodies -------------------------------------------------------------------------------


def run_survey(ctx: Context) -> dict:
    """The label-free curriculum's survey (`visplay.evolve.curriculum`), once, before iteration 1:
    the base reasoner's greedy answer to one question about each image of the pool, written to
    ``survey.parquet``; a finished survey is read back (resume)."""
    ev, say = ctx.cfg.evolve, ctx.say
    rows = curriculum.read_survey(ctx.run.root)
    if rows is None:
        items = curriculum.pool(open_images(ctx.cfg, 1), ev.survey_images)
        level = lambda image_id: getattr(world_scene(image_id, ctx.cfg.source_world), "level", None)  # noqa: E731
        params = ev.params(1, temperature=0, top_k=0, top_p=1.0, seed=ev.seed)
        with _sampler(ctx, ctx.base, stage="survey") as sampler:
            rows = curriculum.survey(sampler, items, params, level)
        curriculum.write_survey(ctx.run.root, rows)
    words = sorted(r["difficulty"] for r in rows)
    say(f"survey: {len(rows)} unlabeled images ordered by the base reasoner's answer length "
        f"({words[0]}-{words[-1]} words, median {words[len(words) // 2]}); each iteration takes the easiest unseen")
    return {"images": len(rows), "median_difficulty": words[len(words) // 2]}


def run_questioner(ctx: Context) -> dict:
    """Q_t = GRPO(Q_{t-1}) on unseen images; reward from the frozen reasoner R_{t-1}."""
    ev = ctx.cfg.evolve
    if not ev.train_questioner:
        return {"model": str(ctx.model("questioner", ctx.t - 1)), "skipped": "frozen questioner (ablation)"}
    items, skipped = take_images(ctx, ev.questioner_images)
    # here, or on the launcher's GPUs/nodes (visplay/evolve/worker.py), which fetch the images themselves
    stage = ctx.name("questioner")
    guard = logged_phase(ctx, "questioner", launch_phase(ctx.cfg, ctx.run, stage) if ctx.cfg.hardware.launcher
                         else train_phase(ctx, "questioner", questioner_dataset(items)))
    model, drift = ctx.run.output(stage), None
    if ev.min_valid_share is not None:
        model, drift = kept_questioner(ctx, items, model)
    return {"model": str(model), "images": len(items), "skipped_images": skipped, "guard": guard,
            **({"valid_share": drift} if drift else {})}


def kept_questioner(ctx: Context, items, trained: Path) -> tuple[Path, dict]:
    """The drift guard, label-free: the trained questioner, unless its share of well-formed questions
    on the phase's own images fell under `evolve.min_valid_share` and under its predecessor's --
    then the predecessor (GRPO can drift into degenerate tag sequences, which cost the round its
    questions: docs/experiments.md, session 11). (model, the two shares and the verdict)."""
    params, floor = stage_params(ctx.cfg, ctx.t), ctx.cfg.evolve.min_valid_share

    def share(model: Path) -> float:
        with _sampler(ctx, model, stage=ctx.name("questioner")) as sampler:
            rows = generate_questions(sampler, items, 4, params, world=None)
        return sum(r["valid"] for r in rows) / max(1, len(rows))

    trained_share = share(trained)
    if trained_share >= floor:  # the usual case: the predecessor is not sampled
        return trained, {"trained": trained_share, "kept": "trained"}
    prev = ctx.model("questioner", ctx.t - 1)
    shares = {"trained": trained_share, "previous": share(prev)}
    if shares["trained"] >= shares["previous"]:
        return trained, {**shares, "kept": "trained"}
    ctx.say(f"{ctx.name('questioner')}: {shares['trained']:.1%} of the trained questioner's questions are well formed "
            f"(previous {shares['previous']:.1%}, floor {floor:.1%}): kept the previous one")
    return prev, {**shares, "kept": "previous"}


def run_questions(ctx: Context) -> dict:
    """Q_t writes k questions per unseen image."""
    items, skipped = take_images(ctx, ctx.cfg.evolve.images_per_iteration, replay=True)
    rows = _chunked(ctx, "questions", items)
    atomic_write_parquet(ctx.run.output(ctx.name("questions")), rows)
    valid = sum(r["valid"] for r in rows)
    held = ctx.cfg.evolve.advance_kept_share is not None
    level = ctx.cfg.source_world_at(ctx.rung()).min_objects if held else None
    ctx.say(f"{ctx.name('questions')}: {len(rows)} questions for {len(items)} images, {valid / len(rows):.0%} valid"
            + (f" (ladder level {level})" if held else ""))
    return {"rows": len(rows), "valid": valid, "image_ids": sorted({r["image_id"] for r in rows}),
            "skipped_images": skipped, **({"ladder_level": level} if held else {})}


def run_labels(ctx: Context) -> dict:
    """R_{t-1} samples m answers per question; majority = silver label; keep agreement in the band."""
    rows = stage_items(ctx, "labels")
    labeled = _chunked(ctx, "labels", rows)
    atomic_write_parquet(ctx.run.output(ctx.name("labels")), labeled)
    stats, mix = label_accuracy(labeled), level_mix(labeled)
    ctx.say(f"{ctx.name('labels')}: kept {stats['n_kept']}/{len(rows)}; pseudo-label accuracy (kept) "
            f"{pct(stats['label_accuracy_kept'])}"
            + ("; kept by level " + " ".join(f"{lv}:{m['kept']}/{m['valid']}" for lv, m in mix.items()) if mix else ""))
    return {**stats, "skipped": skip_reasons(labeled), "by_level": mix}


def run_reasoner(ctx: Context) -> dict:
    """R_t = GRPO(R_{t-1}) on the kept silver labels (unless the stop signal fired or nothing was kept)."""
    ev, stage, prev = ctx.cfg.evolve, ctx.name("reasoner"), ctx.model("reasoner", ctx.t - 1)
    labels = ctx.run.stage_info(ctx.name("labels"))
    stop = stop_signal(labels, ev.stop_agreement)
    if stop:
        ctx.say(f"{stage}: stopped before training: {stop}; the reasoner is carried over unchanged")
        return {"model": str(prev), "skipped": stop, "train_rows": 0, "stopped": True}
    if ev.committee and labels.get("n_kept") == 0:  # nothing at this level reached agreement: the ladder ends here
        why = f"the committee agreed on no question of iteration {ctx.t}"
        ctx.say(f"{stage}: stopped: {why}; the run ends with the reasoner of iteration {ctx.t - 1}")
        return {"model": str(prev), "skipped": why, "train_rows": 0, "stopped": True}
    rows = reasoner_rows(ctx.run.root, ctx.t, ev.accumulate_labels)
    if not any(r["kept"] for r in rows):
        ctx.say(f"{stage}: no question kept in the agreement band; the reasoner is carried over unchanged")
        return {"model": str(prev), "skipped": "no kept questions", "train_rows": 0}
    if ev.reasoner_objective == "sft":
        return run_reasoner_sft(ctx, rows)
    ds = reasoner_dataset(rows, "questioner_answer" if ev.labels == "questioner" else "label")
    guard = logged_phase(ctx, "reasoner", launch_phase(ctx.cfg, ctx.run, stage) if ctx.cfg.hardware.launcher
                         else train_phase(ctx, "reasoner", ds))
    return {"model": str(ctx.run.output(stage)), "train_rows": len(ds), "guard": guard}


def run_reasoner_sft(ctx: Context, rows: list[dict]) -> dict:
    """R_t = SFT(R_{t-1}) on its own chains that agree with the committee (`visplay.evolve.sft`);
    with `evolve.coevolve`, every local committee member trains the same way on its own chains --
    at once, one worker process each, when `member_slots` allows more than one."""
    ev, stage = ctx.cfg.evolve, ctx.name("reasoner")
    members = range(len(chunk_models(ctx, "labels")) if ev.coevolve else 1)
    training = [i for i in members if n_chains(rows, i)]
    pending = [i for i in training if finished_phase(member_output(ctx.run, stage, i)) is None]
    slots = member_slots(ctx.cfg, len(pending))
    if slots > 1:
        run_member_workers(ctx.cfg, ctx.run, stage, pending, slots)  # each saves its model; read back below
    trained = []
    for i in members:
        model, history = train_member(ctx, i, rows)
        if i not in training:
            ctx.say(f"{stage}: member {i} has no agreeing chain; carried over unchanged")
        for h in history:
            ctx.run.log({"stage": stage, "member": i, **h})
        trained.append(model)
    return {"model": trained[0], "objective": "sft", "train_rows": n_chains(rows, 0),
            **({"committee": trained[1:]} if ev.coevolve else {})}


def member_slots(cfg: Config, pending: int) -> int:
    """How many committee members train at once: one per GPU (``hardware.generation_shards``), or on a
    CPU one per thread torch may use, each on its own core -- a 4M-parameter model scales badly across
    threads (session 11, 2 cores: 0.54 s a step on two threads, 0.83 s for each of two one-thread jobs
    at once). ``OMP_NUM_THREADS=1`` therefore trains them one after the other."""
    import torch

    if pending < 2:
        return 1
    if torch.cuda.is_available() or cfg.hardware.generation_shards > 1:
        return min(pending, cfg.hardware.generation_shards)
    return min(pending, torch.get_num_threads())


def train_member(ctx: Context, i: int, rows: list[dict] | None = None) -> tuple[str, list[dict]]:
    """Committee member ``i`` of iteration t (0: the reasoner) fine-tuned on its own agreeing chains of
    ``rows`` (default: the kept labels, `reasoner_rows`); (model dir, log history). A member with no
    agreeing chain is carried over unchanged; one already saved (a worker, a resume) is read back."""
    import torch

    ev, stage = ctx.cfg.evolve, ctx.name("reasoner")
    models = chunk_models(ctx, "labels")  # the committee that labelled these rows, reasoner first
    out = member_output(ctx.run, stage, i)
    done = finished_phase(out)
    if done is not None:
        return str(out), list(done.get("log_history", []))
    rows = reasoner_rows(ctx.run.root, ctx.t, ev.accumulate_labels) if rows is None else rows
    data = chain_rows(rows, i, seed=ev.seed + ctx.t)
    if not data:
        return str(models[i]), []
    model, processor = load_model(models[i], dtype=torch.float32)
    card = {"run": str(ctx.run.root), "stage": f"{stage} (SFT on agreeing chains, committee member {i})",
            "started from": str(models[i]), "trained": f"{ev.sft_epochs} epochs of {len(data)} chains, batch "
            f"{ev.sft_batch_size}, lr {ev.sft_lr:g} ({ev.sft_schedule}, warmup {ev.sft_warmup:g})", "labels": f"committee of {len(models)}, agreement {ev.agreement}"}
    _, history = train_sft(model, processor, data, out, epochs=ev.sft_epochs, batch_size=ev.sft_batch_size,
                           lr=ev.sft_lr, schedule=ev.sft_schedule, warmup=ev.sft_warmup, seed=ev.seed + ctx.t,
                           dress=lambda tmp: dress_checkpoint(tmp, f"visplay {stage}", card, tokenizer=processor.tokenizer,
                                                              max_new_tokens=ev.max_new_tokens, card_dir=out))
    return str(out), history


def member_output(run: RunDir, stage: str, i: int) -> Path:
    """Where member ``i`` of a reasoner stage is saved: the stage's output (the reasoner) or ``committee<i>``."""
    return run.output(stage) if i == 0 else run.output(stage).with_name(f"committee{i}")


def run_eval(ctx: Context) -> dict:
    """Held-out accuracy of R_t (the base model at t = 0) on world seeds never used in training."""
    cfg, stage, e = ctx.cfg, ctx.name("eval"), ctx.cfg.eval
    model_dir = ctx.model("reasoner", ctx.t)
    with _sampler(ctx, model_dir, progress=True, stage=stage) as sampler:
        result = evaluate_world(sampler, cfg.world, e, grader=ctx.grader, labelled_levels=cfg.labelled_levels)
    write_eval(result, ctx.run.output(stage), {"model": str(model_dir)})
    o = result.summary["overall"]
    info = {"greedy": o["greedy"], "maj": o["maj"], "pass": o["pass"], "n": o["n"],
            "by_level": {lv: {k: v.get(k) for k in ("n", "greedy", "maj", "listing_complete")}
                         for lv, v in result.summary["by_level"].items()}}
    parts = []
    for name, levels in level_groups({r["level"] for r in result.rows}, cfg.labelled_levels).items():
        rs = [r["greedy_correct"] for r in result.rows if r["level"] in levels]
        if rs:
            info[f"greedy_{name}"], info[f"n_{name}"] = sum(rs) / len(rs), len(rs)
            parts.append(f"{name} {info[f'greedy_{name}']:.1%}")
    ctx.say(f"{stage}: greedy {o['greedy']:.1%}" + (f" ({', '.join(parts)})" if parts else "")
            + f", maj@{e.k} {o['maj']:.1%}, pass@{e.k} {o['pass']:.1%}")
    return info


@dataclass(frozen=True)
class Step:
    """A stage of the loop and the body that runs it."""

    stage: Stage
    body: Callable[[Context], dict]

    @property
    def kind(self) -> str:
        return self.stage.kind


#: One iteration of the loop, in `visplay.run.stages.STAGES` order, each stage with its body.
STEPS: tuple[Step, ...] = tuple(Step(BY_KIND[kind], body) for kind, body in (
    ("questioner", run_questioner), ("questions", run_questions), ("labels", run_labels),
    ("reasoner", run_reasoner), ("eval", run_eval)))
#: The step before the first iteration: the base model's held-out accuracy.
BASELINE_STEP = Step(BY_KIND["eval"], run_eval)
assert tuple(s.kind for s in STEPS) == ITERATION_STAGES, "each stage of run.stages.STAGES needs its body here, in order"


def stop_signal(labels_info: dict, stop_agreement: float | None) -> str | None:
    """Label-free collapse warning: when the reasoner's votes on fresh unlabeled questions agree
    this much, self-labels stop carrying information (min(c, 1-c) ~ 0) and the agreement filter
    starts letting consistent errors in (docs/experiments.md, session 6). None = keep going."""
    agreement = labels_info.get("mean_agreement")
    if stop_agreement is None or agreement is None or agreement < stop_agreement:
        return None
    return f"mean agreement {agreement:.2f} >= evolve.stop_agreement {stop_agreement}"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"
