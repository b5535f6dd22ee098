"""Stage workers: the loop stays one controller process; its heavy parts can run in other processes.

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

With a sampling server (``sampler.url``) generation is already data parallel on the server side
(e.g. `vllm serve --data-parallel-size 8`), so shards are not used then.
Test: `pytest tests/test_shards.py` (the shard worker for real, two processes on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from visplay.config import Config, from_dict
from visplay.evolve.rundir import RunDir

STAGE = re.compile(r"iter(\d+)/(questioner|reasoner|questions|labels)")
CONTROLLER_PID = "VISPLAY_CONTROLLER_PID"  # the loop's pid, passed through any launcher to the workers


class WorkerError(RuntimeError):
    pass


# -- the stage bodies shared by the loop and the workers -------------------------------------------


def stage_params(cfg: Config, t: int):
    """The sampling parameters of iteration ``t``'s generation and labeling stages."""
    from visplay.sampling.base import SamplingParams

    ev = cfg.evolve
    return SamplingParams(temperature=ev.temperature, top_k=ev.top_k, top_p=ev.top_p, max_new_tokens=ev.max_new_tokens,
                          seed=ev.seed + t)


def questions_fn(cfg: Config, sampler, sample, t: int):
    """``fn(chunk, chunk_index) -> rows`` of iteration ``t``'s questions stage (each chunk its own seed)."""
    from visplay.evolve.stages import generate_questions

    ev = cfg.evolve
    return lambda chunk, i: generate_questions(sampler, chunk, ev.questions_per_image,
                                               replace(sample, seed=sample.seed + 7919 * i), cfg.source_world_at(t))


def labels_fn(cfg: Config, sampler, sample, grader):
    """``fn(chunk, chunk_index) -> rows`` of the labels stage."""
    from visplay.evolve.stages import label_questions

    ev = cfg.evolve
    return lambda chunk, i: label_questions(sampler, chunk, ev.label_samples, replace(sample, seed=sample.seed + 7919 * i),
                                            grader, (ev.band_low, ev.band_high))


def item_id(item) -> str:
    return item.id


def row_image_id(row: dict) -> str:
    return row["image_id"]


# -- reading a run back ------------------------------------------------------------------------------


def _context(run_root: str | Path) -> tuple[Config, RunDir, Path]:
    from visplay.evolve.preflight import model_dir

    run = RunDir(run_root)
    cfg = from_dict(Config, run.manifest()["config"], str(run.manifest_path))
    return cfg, run, model_dir(cfg)


def _parse(stage: str) -> tuple[int, str]:
    m = STAGE.fullmatch(stage)
    if not m:
        raise WorkerError(f"unknown stage {stage!r}; expected iter<t>/questioner|reasoner|questions|labels")
    return int(m.group(1)), m.group(2)


def _model_of(run: RunDir, stage: str) -> Path:
    model = run.stage_info(stage).get("model")
    if not run.is_done(stage) or not model:
        raise WorkerError(f"{stage} is not finished in {run.manifest_path}; a worker needs it")
    return Path(model)


def lineage(run: RunDir, base: Path, t: int) -> tuple[Path, Path]:
    """(questioner, reasoner) that iteration ``t`` starts from."""
    if t == 1:
        return base, base
    return _model_of(run, f"iter{t - 1}/questioner"), _model_of(run, f"iter{t - 1}/reasoner")


# -- GRPO phase worker (every rank of `accelerate launch`) ------------------------------------------


def grpo_main(run_root: str, stage: str) -> None:
    """Train iteration t's questioner or reasoner on every rank; the main rank saves model + record."""
    import torch

    from visplay import dist
    from visplay.answers import Grader
    from visplay.evolve.loop import _take_images
    from visplay.evolve.stages import questioner_dataset, reasoner_dataset, reasoner_rows
    from visplay.io import atomic_dir, atomic_write_json
    from visplay.models import PHASE_RECORD, denormals_flushed, last_checkpoint, load_model, restore_weights
    from visplay.sampling.factory import for_rank, open_sampler
    from visplay.train import QuestionerRewardFn, ReasonerRewardFn, build_trainer, dress_phase

    cfg, run, base = _context(run_root)
    t, role = _parse(stage)
    if role not in ("questioner", "reasoner"):
        raise WorkerError(f"grpo trains iter<t>/questioner or iter<t>/reasoner, not {stage}")
    ranks = dist.current()
    print(f"worker {stage}: rank {ranks.rank} of {ranks.world}", flush=True)
    ev = cfg.evolve
    prev_q, prev_r = lineage(run, base, t)
    out_dir = run.root / f"iter{t}" / role
    ckpt_dir = out_dir.with_name(out_dir.name + ".ckpt")
    phase = getattr(ev, role)
    device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else None
    if role == "questioner":
        items, _ = _take_images(cfg, run, t, ev.questioner_images)
        dataset, start = questioner_dataset(items), prev_q
        frozen_cm = open_sampler(for_rank(cfg.sampler, ranks.local_rank), prev_r, cfg.dtype, device=device,
                                 log_path=run.root / f"{stage}.rank{ranks.rank}.server.log")
    else:
        label_col = "questioner_answer" if ev.labels == "questioner" else "label"
        rows = reasoner_rows(run.root, t, ev.accumulate_labels)
        dataset, start, frozen_cm = reasoner_dataset(rows, label_col), prev_r, contextlib.nullcontext()
    model, processor = load_model(start, dtype=torch.float32)
    with Grader(timeout=ev.grader_timeout, workers=ev.grader_workers) as grader, frozen_cm as frozen:
        if role == "questioner":
            reward = QuestionerRewardFn(frozen, grader, m=ev.reward_samples, temperature=ev.temperature,
                                        top_k=ev.top_k, max_new_tokens=ev.max_new_tokens,
                                        threshold=ev.diversity_threshold if ev.diversity_penalty else 1.0,
                                        seed=ev.seed + t + 100003 * ranks.rank)
        else:
            reward = ReasonerRewardFn(grader)
        trainer, guard = build_trainer(model, processor, dataset, reward, phase, ckpt_dir,
                                       log_dir=run.root / "tb" / f"iter{t}-{role}",
                                       report_to=list(ev.report_to) if ranks.main else [], bf16=cfg.dtype == "bfloat16")
        ckpt = last_checkpoint(ckpt_dir)
        if ckpt:
            restore_weights(model, ckpt)
        with denormals_flushed():
            trainer.train(resume_from_checkpoint=ckpt)
    trainer.model.model.rope_deltas = None
    record = {"log_history": [dict(h) for h in trainer.state.log_history], "guard": guard.fired}
    tmp = out_dir.with_name(out_dir.name + ".tmp")  # the folder atomic_dir fills on the main rank
    if ranks.main:
        with atomic_dir(out_dir) as tmp:
            dist.barrier(ranks)  # tmp exists: every rank may take part in the (ZeRO-3/FSDP) gather
            trainer.save_model(str(tmp))  # gathers sharded weights; only the main process writes
            processor.save_pretrained(tmp)
            dress_phase(tmp, out_dir, role, phase, start, processor.tokenizer)
            atomic_write_json(tmp / PHASE_RECORD, record)
    else:
        dist.barrier(ranks)
        trainer.save_model(str(tmp))
    dist.barrier(ranks)
    if ranks.main:
        import shutil

        shutil.rmtree(ckpt_dir, ignore_errors=True)


def launch_phase(cfg: Config, run: RunDir, stage: str, out_dir: Path) -> tuple[list[dict], str | None]:
    """Loop side: run ``stage`` through ``hardware.launcher`` (unless its model is already saved);
    return the phase's log history and health-guard verdict from the record saved with the model."""
    from visplay.models import finished_phase

    done = finished_phase(out_dir)
    if done is None:
        from visplay.config import REPO_ROOT

        launcher = (cfg.hardware.launcher.replace("{python}", shlex.quote(sys.executable))
                    .replace("{repo}", shlex.quote(str(REPO_ROOT))))
        cmd = f"{launcher} -m visplay.evolve.worker grpo {shlex.quote(str(run.root))} {shlex.quote(stage)}"
        _run_logged(cmd, run.root / f"{stage}.worker.log", shell=True)
        done = finished_phase(out_dir)
        if done is None:
            raise WorkerError(f"{stage}: `{cmd}` finished but saved no model in {out_dir}; see "
                              f"{run.root / f'{stage}.worker.log'}")
    return list(done.get("log_history", [])), done.get("guard")


# -- sharded generation / labeling ------------------------------------------------------------------------


def shard_main(run_root: str, stage: str, rank: int, world: int) -> None:
    """One shard of iteration t's questions or labels stage (its own parts only)."""
    from visplay.answers import Grader
    from visplay.dist import Ranks
    from visplay.evolve.loop import _take_images
    from visplay.evolve.shards import run_shard
    from visplay.evolve.stages import question_key
    from visplay.sampling.factory import open_sampler

    cfg, run, base = _context(run_root)
    t, name = _parse(stage)
    ranks, ev, it = Ranks(rank, world), cfg.evolve, run.root / f"iter{t}"
    sample = stage_params(cfg, t)
    if name == "questions":
        items, _ = _take_images(cfg, run, t, ev.images_per_iteration)
        with open_sampler(cfg.sampler, _model_of(run, f"iter{t}/questioner"), cfg.dtype) as sampler:
            run_shard(it / "questions.parts", items, ranks, ev.chunk_size, questions_fn(cfg, sampler, sample, t),
                      key=item_id, row_key=row_image_id)
    elif name == "labels":
        rows = pq.read_table(it / "questions.parquet").to_pylist()
        with Grader(timeout=ev.grader_timeout, workers=ev.grader_workers) as grader, \
                open_sampler(cfg.sampler, lineage(run, base, t)[1], cfg.dtype) as sampler:
            run_shard(it / "labels.parts", rows, ranks, ev.chunk_size, labels_fn(cfg, sampler, sample, grader),
                      key=question_key, row_key=question_key)
    else:
        raise WorkerError(f"shard runs iter<t>/questions or iter<t>/labels, not {stage}")


def _gpu_for(rank: int) -> str | None:
    """The device string for shard ``rank``: the rank-th visible GPU (None: no GPU, or fewer GPUs than shards)."""
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        return None
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(n)))).split(",") if d]
    return visible[rank % len(visible)]


def run_sharded_stage(cfg: Config, run: RunDir, stage: str, items, parts_dir: Path, key, row_key) -> list[dict]:
    """Loop side: start ``hardware.generation_shards`` shard workers, wait for all, merge their rows by item."""
    from visplay.evolve.shards import gather_shards

    world = cfg.hardware.generation_shards
    procs = []
    for rank in range(world):
        env = worker_env()
        gpu = _gpu_for(rank)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "visplay.evolve.worker", "shard", str(run.root), stage, str(rank), str(world)]
        log = run.root / f"{stage}.shard{rank}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            procs.append((rank, log, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)))
    failed = []
    for rank, log, proc in procs:
        if proc.wait() != 0:
            failed.append(f"shard {rank} exited with status {proc.returncode}; end of {log}:\n{_tail(log)}")
    if failed:
        raise WorkerError(f"{stage}: " + "\n".join(failed) + "\nfinished chunks are kept; resume the run")
    return gather_shards(parts_dir, items, world, cfg.evolve.chunk_size, key, row_key)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def launcher_path() -> str:
    """PATH for launcher commands, with this interpreter's bin folder first (so `.venv/bin/visplay`
    finds `.venv/bin/accelerate` without an activated environment)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def worker_env() -> dict[str, str]:
    """This environment plus the controller's pid, so workers can tell when the loop is gone."""
    return {**os.environ, CONTROLLER_PID: str(os.getpid())}


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


def _run_logged(cmd: str, log: Path, shell: bool) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        rc = subprocess.run(cmd, shell=shell, stdout=f, stderr=subprocess.STDOUT,
                            env={**worker_env(), "PATH": launcher_path()}).returncode
    if rc != 0:
        raise WorkerError(f"`{cmd}` exited with status {rc}; end of {log}:\n{_tail(log)}")


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
    args = p.parse_args(argv)
    pid = os.environ.get(CONTROLLER_PID)
    exit_with_controller(int(pid) if pid and pid.isdigit() else None)
    if args.job == "grpo":
        grpo_main(args.run, args.stage)
    else:
        shard_main(args.run, args.stage, args.rank, args.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
