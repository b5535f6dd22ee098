"""The labelling committee: its members, their samplers and seeds, and their co-evolution.

The committee is the previous reasoner R_{t-1} (member 0) and `evolve.committee`'s members (local
model dirs, or ``url=`` servers). This module owns them from end to end:

* **who**: `members` resolves and checks `evolve.committee` (preflight calls it before a run
  exists); `labellers` is iteration t's committee -- with `evolve.coevolve`, the members as the
  previous round trained them, read from the manifest's ``committee`` record of its reasoner stage.
* **sampling**: `open_samplers` opens every member's sampler (a ``url=`` member through an
  OpenAI-compatible client, `member_sampler`); member i samples with the stage's seed +
  ``MEMBER_SEED_STRIDE * i`` (`visplay.evolve.seeds`, applied by `visplay.evolve.rows.label_questions`).
* **co-evolution** (`evolve.reasoner_objective: sft`): `train` fine-tunes the reasoner and, with
  `evolve.coevolve`, every local member on its own agreeing chains (`visplay.evolve.sft.fine_tune`),
  each saving its own model at `RunDir.member_output`, and the record says where they are. Where:
  with ``hardware.launcher`` the members train one after another, each on every GPU (`member_plan`
  says "launched"; `visplay.evolve.launch.launch_member`) -- the default at scale, since a 7B
  member's SFT wants all the GPUs' memory and one member at a time keeps each run's steps those of
  one data-parallel job; without a launcher, at once in worker slots (`member_slots`: one per
  GPU of ``hardware.generation_shards``, or on a CPU one per core), else in this process.

The vote itself is `visplay.answers.committee`. A worker (``python -m visplay.evolve.worker sft``)
calls `train_member` here. Test: `pytest tests/test_committee.py tests/test_shards.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from visplay.config import Config, SamplerConfig, resolve_model
from visplay.evolve import sft
from visplay.evolve.context import Context
from visplay.evolve.launch import WorkerError, launch_member, run_workers
from visplay.evolve.rows import reasoner_rows
from visplay.models import ModelError, check_model_dir, finished_phase
from visplay.run.stages import stage_name
from visplay.sampling.factory import open_sampler

#: The key of a reasoner stage's manifest record that lists the co-evolved members' models.
RECORD = "committee"


def members(cfg: Config) -> list[Path | str]:
    """`evolve.committee` as the labels stage opens it: local model dirs (checked) and ``url=`` strings."""
    out: list[Path | str] = []
    for entry in cfg.evolve.committee:
        if entry.startswith("url="):
            out.append(entry)
            continue
        try:
            out.append(check_model_dir(resolve_model(entry)))
        except ModelError as e:
            raise ModelError(f"evolve.committee member {entry!r}: {e}") from e
    return out


def member_sampler(base: SamplerConfig, member: Path | str) -> tuple[SamplerConfig, Path | str]:
    """How a committee member samples: a ``url=`` member through an OpenAI-compatible client at that
    address, a local model like the run's own models (``sampler``)."""
    if isinstance(member, str) and member.startswith("url="):
        return dataclasses.replace(base, backend="openai", url=member[4:], launch=None), member[4:]
    return base, member


def labellers(ctx: Context) -> list[Path | str]:
    """Iteration t's committee: the previous reasoner, then `evolve.committee`'s members (with
    `evolve.coevolve`, as the previous round trained them)."""
    others = members(ctx.cfg)
    if ctx.cfg.evolve.coevolve and ctx.t > 1:
        others = [Path(p) for p in ctx.run.stage_info(stage_name(ctx.t - 1, "reasoner")).get(RECORD, others)]
    return [ctx.model("reasoner", ctx.t - 1), *others]


@contextlib.contextmanager
def open_samplers(ctx: Context, sampler_cfg: SamplerConfig | None = None, log: Path | None = None,
                  device: str | None = None):
    """Every labeller's sampler, open together, the reasoner first; member i > 0 logs a launched
    server to ``<log>.member<i>``."""
    base = sampler_cfg or ctx.cfg.sampler
    with contextlib.ExitStack() as stack:
        samplers = []
        for i, model in enumerate(labellers(ctx)):
            cfg, where = member_sampler(base, model)
            member_log = None if log is None or not i else log.with_name(f"{log.stem}.member{i}{log.suffix}")
            samplers.append(stack.enter_context(
                open_sampler(cfg, where, ctx.cfg.dtype, log_path=member_log or log, device=device)))
        yield samplers


def member_slots(cfg: Config, pending: int) -> int:
    """How many committee members train at once without a launcher (with one they train one after
    another, each on every GPU): one per GPU (``hardware.generation_shards``), or on a
    CPU one per thread torch may use, each on its own core -- a 4M-parameter model scales badly across
    threads (session 11, 2 cores: 0.54 s a step on two threads, 0.83 s for each of two one-thread jobs
    at once). ``OMP_NUM_THREADS=1`` therefore trains them one after the other."""
    import torch

    if pending < 2:
        return 1
    if torch.cuda.is_available() or cfg.hardware.generation_shards > 1:
        return min(pending, cfg.hardware.generation_shards)
    return min(pending, torch.get_num_threads())


def member_plan(cfg: Config, pending: int) -> tuple[str, int]:
    """Where ``pending`` members' SFT runs: ("launched", 1) -- one after another through
    ``hardware.launcher``, each on every GPU --, ("slots", n) -- n worker processes at once, one GPU
    (or core) each --, or ("in process", 1)."""
    if cfg.hardware.launcher:
        return "launched", 1
    slots = member_slots(cfg, pending)
    return ("slots", slots) if slots > 1 else ("in process", 1)


def train(ctx: Context, rows: list[dict]) -> dict:
    """R_t = SFT(R_{t-1}) on its own chains that agree with the committee; with `evolve.coevolve`,
    every local member trains the same way on its own chains -- where `member_plan` says. A member with
    no agreeing chain is carried over; one already saved (a resume) is read back, never trained again.
    Returns the stage's record."""
    ev, stage = ctx.cfg.evolve, ctx.name("reasoner")
    models = labellers(ctx)
    everyone = range(len(models) if ev.coevolve else 1)
    training = [i for i in everyone if sft.n_chains(rows, i)]
    pending = [i for i in training if finished_phase(ctx.run.member_output(stage, i)) is None]  # the one "is it done"
    where, slots = member_plan(ctx.cfg, len(pending))
    if where == "launched":  # one member after another, each on every GPU; each saves its own model
        for i in pending:
            launch_member(ctx.cfg, ctx.run, stage, i)
    elif where == "slots":  # each worker saves its member's model; read back below
        jobs = [(["sft", str(i)], f"member{i}") for i in pending]
        for start in range(0, len(jobs), slots):
            run_workers(ctx.run, stage, jobs[start : start + slots], slots)
    trained = []
    for i in everyone:
        out = ctx.run.member_output(stage, i)
        if i in pending and where == "in process":
            train_member(ctx, i, rows)
        if i not in training:
            ctx.say(f"{stage}: member {i} has no agreeing chain; carried over unchanged")
            trained.append(str(models[i]))
            continue
        record = finished_phase(out)
        if record is None:
            raise WorkerError(f"{stage}: committee member {i} saved no model in {out}; resume the run")
        for h in record.get("log_history", []):
            ctx.run.log({"stage": stage, "member": i, **h})
        trained.append(str(out))
    return {"model": trained[0], "objective": "sft", "train_rows": sft.n_chains(rows, 0),
            **({RECORD: trained[1:]} if ev.coevolve else {})}


def train_member(ctx: Context, i: int, rows: list[dict] | None = None) -> Path:
    """Committee member ``i`` of iteration t (0: the reasoner) fine-tuned on its own agreeing chains of
    ``rows`` (default: the kept labels, `reasoner_rows`), saved at `RunDir.member_output`; on every rank
    of a launcher when ``ctx.ranks`` is set (the main rank saves)."""
    ev, stage = ctx.cfg.evolve, ctx.name("reasoner")
    models = labellers(ctx)  # the committee that labelled these rows, reasoner first
    rows = reasoner_rows(ctx.run.root, ctx.t, ev.accumulate_labels) if rows is None else rows
    data = sft.chain_rows(rows, i, seed=ev.seed + ctx.t)
    card = {"run": str(ctx.run.root), "stage": f"{stage} (SFT on agreeing chains, committee member {i})",
            "started from": str(models[i]), "trained": ev.sft.describe(len(data)),
            "labels": f"committee of {len(models)}, agreement {ev.agreement}"}
    return sft.fine_tune(models[i], data, ctx.run.member_output(stage, i), ev.sft, seed=ev.seed + ctx.t,
                         title=f"visplay {stage}", card=card, max_new_tokens=ev.max_new_tokens,
                         bf16=ctx.cfg.dtype == "bfloat16", ranks=ctx.ranks)
