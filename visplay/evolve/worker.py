"""Stage workers: the loop stays one controller process; its heavy parts can run in other processes.

Each worker calls the module that owns its job -- `visplay.evolve.grpo.train_phase` (a GRPO rank),
`visplay.evolve.sampling_stages.chunk_fn` (a shard), `visplay.evolve.committee.train_member` (a
committee member's SFT) -- the same functions the loop calls in process, never the loop's stage
bodies; the loop's side -- starting workers and reading back their outputs -- is
`visplay.evolve.launch`.

The loop (`visplay evolve`) is the only writer of the run directory's manifest. Two parts of an
iteration can be handed to workers that rebuild their inputs from the run directory alone (the
manifest's config and finished stages, the previous stage's parquet) and write only their own
outputs:

* a GRPO phase on several GPUs or nodes (``hardware.launcher``): the loop runs
  ``{launcher} -m visplay.evolve.worker grpo RUN iter<t>/<role>`` and waits (``{python}`` and
  ``{repo}`` in the launcher become this interpreter and the repository root), e.g.
  with ``launcher: accelerate launch --config_file configs/accelerate/zero3.yaml`` (arguments are
  positional, so no launcher mistakes them for its own options). Every rank
  trains (TRL/accelerate shard the batch and, under ZeRO-3/FSDP, the weights); resuming from the
  last checkpoint works as in process; the main rank saves the gathered model with its phase
  record (``train_result.json``), which is what the loop then reads.
* question generation and labeling with the transformers sampler (``hardware.generation_shards``
  > 1): the loop starts one ``worker shard`` process per shard, shard r on GPU r, each taking
  items r, r+W, ... and writing its own parts (`visplay.evolve.shards`); the loop merges them by
  item once all have finished. A shard that crashes loses at most one chunk.
* the reasoner's SFT and the co-evolving committee's (``reasoner_objective: sft``): with
  ``hardware.launcher``, ``{launcher} -m visplay.evolve.worker sft RUN iter<t>/reasoner MEMBER`` per
  member, one after another, every rank training (the Trainer shards the batch, and under ZeRO-3/FSDP
  the weights) and the main rank saving; without a launcher, on the generation slots: one plain
  ``worker sft`` process per member at once. Each saves its own model, which the loop reads back (a
  saved member is not trained again on resume; a killed one resumes from its last checkpoint).

With a sampling server (``sampler.url``) generation is already data parallel on the server side
(e.g. `vllm serve --data-parallel-size 8`), so shards are not used then.
Test: `pytest tests/test_shards.py` (the shard worker for real, two processes on CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from visplay import dist
from visplay.answers import Grader
from visplay.config import Config, config_from_manifest
from visplay.evolve import committee
from visplay.evolve.context import Context
from visplay.evolve.grpo import train_phase
from visplay.evolve.launch import CONTROLLER_PID, WorkerError
from visplay.evolve.sampling_stages import CHUNK_KEYS, chunk_fn, open_stage_samplers, stage_items
from visplay.run.stages import BY_KIND, parse_stage
from visplay.evolve.preflight import model_dir
from visplay.run.rundir import RunDir
from visplay.evolve.shards import run_shard


def _open(run_root: str | Path, stage: str, job: str) -> tuple[Config, RunDir, int, str]:
    """(config, run, t, kind) of ``stage``, rebuilt from the run directory alone (the manifest's config)."""
    run = RunDir(run_root)
    cfg = config_from_manifest(run.manifest()["config"], str(run.manifest_path))
    fits = {"grpo": lambda s: s.trains, "shard": lambda s: s.chunked, "sft": lambda s: s.kind == "reasoner"}[job]
    try:
        t, kind = parse_stage(stage)
    except ValueError as e:
        raise WorkerError(str(e)) from e
    if t == 0 or not fits(BY_KIND[kind]):
        raise WorkerError(f"{job} runs iter<t>/{'|'.join(k for k, s in BY_KIND.items() if fits(s))}, not {stage}")
    return cfg, run, t, kind


def _grader(cfg: Config) -> Grader:
    return Grader(timeout=cfg.evolve.grader_timeout, workers=cfg.evolve.grader_workers)


def grpo_main(run_root: str, stage: str) -> None:
    """Train iteration t's questioner or reasoner on every rank; the main rank saves model + record."""
    cfg, run, t, role = _open(run_root, stage, "grpo")
    ranks = dist.current()
    print(f"worker {stage}: rank {ranks.rank} of {ranks.world}", flush=True)
    with _grader(cfg) as grader:
        train_phase(Context(cfg, run, model_dir(cfg), t, grader, ranks=ranks), role)


def shard_main(run_root: str, stage: str, rank: int, world: int) -> None:
    """One shard of iteration t's questions or labels stage (its own parts only)."""
    cfg, run, t, kind = _open(run_root, stage, "shard")
    with _grader(cfg) as grader:
        ctx = Context(cfg, run, model_dir(cfg), t, grader)
        items, (key, row_key) = stage_items(ctx, kind), CHUNK_KEYS[kind]
        with open_stage_samplers(ctx, kind) as sampler:
            run_shard(run.parts(stage), items, dist.Ranks(rank, world), cfg.evolve.chunk_size,
                      chunk_fn(ctx, kind, sampler), key=key, row_key=row_key)


def sft_main(run_root: str, stage: str, member: int) -> None:
    """Fine-tune one committee member of iteration t's reasoner stage on its agreeing chains (on every
    rank of a launcher; the main rank saves)."""
    cfg, run, t, _ = _open(run_root, stage, "sft")
    ranks = dist.current()
    print(f"worker {stage}: member {member}, rank {ranks.rank} of {ranks.world}", flush=True)
    with _grader(cfg) as grader:
        model = committee.train_member(Context(cfg, run, model_dir(cfg), t, grader, ranks=ranks), member)
    if ranks.main:  # the one that saved it
        print(f"worker {stage}: member {member} -> {model}", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed controller stays a zombie until its own parent reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def exit_with_controller(pid: int | None, interval: float = 1.0) -> threading.Thread | None:
    """Exit this worker when the loop that launched it dies (even by SIGKILL, which no handler sees).

    A launcher (shell, ``accelerate launch``, torchrun) sits between the loop and the workers, so
    the kernel's parent-death signal cannot reach them; a poll on the controller's pid can. Outputs
    are written atomically per chunk/checkpoint, so leaving abruptly loses nothing ``--resume`` needs.
    """
    if pid is None:
        return None

    def watch() -> None:
        while _alive(pid):
            time.sleep(interval)
        print(f"visplay worker: controller {pid} is gone; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    thread = threading.Thread(target=watch, name="controller-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m visplay.evolve.worker", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="job", required=True)
    g = sub.add_parser("grpo", help="train one GRPO phase of a run (every rank of a launcher)")
    g.add_argument("run", help="run directory")
    g.add_argument("stage", help="iter<t>/questioner or iter<t>/reasoner")
    s = sub.add_parser("shard", help="one shard of a questions or labels stage")
    s.add_argument("run", help="run directory")
    s.add_argument("stage", help="iter<t>/questions or iter<t>/labels")
    s.add_argument("rank", type=int)
    s.add_argument("world", type=int)
    f = sub.add_parser("sft", help="fine-tune one committee member (reasoner_objective: sft; every rank of a launcher)")
    f.add_argument("run", help="run directory")
    f.add_argument("stage", help="iter<t>/reasoner")
    f.add_argument("member", type=int, help="0: the reasoner, i: committee member i")
    args = p.parse_args(argv)
    pid = os.environ.get(CONTROLLER_PID)
    exit_with_controller(int(pid) if pid and pid.isdigit() else None)
    if args.job == "grpo":
        grpo_main(args.run, args.stage)
    elif args.job == "sft":
        sft_main(args.run, args.stage, args.member)
    else:
        shard_main(args.run, args.stage, args.rank, args.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
