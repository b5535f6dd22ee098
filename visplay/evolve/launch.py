"""The loop's side of stage workers: start them, wait, read back what they wrote.

* `launch_phase`: a GRPO stage through ``hardware.launcher`` -- the loop runs
  ``{launcher} -m visplay.evolve.worker grpo RUN iter<t>/<role>`` and waits (``{python}`` and
  ``{repo}`` in the launcher become this interpreter and the repository root), then reads the
  phase record saved with the model (``train_result.json``).
* `launch_member`: one co-evolving committee member's SFT (``reasoner_objective: sft``) through the same
  launcher, ``{launcher} -m visplay.evolve.worker sft RUN iter<t>/reasoner MEMBER``: the members train
  one after another, each on every GPU, and each saves its own model with its phase record.
* `run_sharded_stage`: ``hardware.generation_shards`` > 1 -- one ``worker shard`` process per
  shard, shard r on GPU r; their parts are merged by item once all have finished.
* `run_workers`: any of these at once, job r on GPU r; the co-evolving committee's members train
  this way (``worker sft``, `visplay.evolve.committee.train`), each saving its own model.
On a CPU the slots split the cores (``OMP_NUM_THREADS``): the embedded default runs on 2 cores as 2
one-thread workers.

The workers themselves are `visplay.evolve.worker`; they call the modules that own their job
(`visplay.evolve.grpo`, `visplay.evolve.sampling_stages`, `visplay.evolve.committee`), never the
loop's stage bodies. Test: `pytest tests/test_shards.py`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from visplay.config import REPO_ROOT, Config
from visplay.run.rundir import RunDir
from visplay.evolve.shards import gather_shards
from visplay.models import finished_phase

CONTROLLER_PID = "VISPLAY_CONTROLLER_PID"  # the loop's pid, passed through any launcher to the workers


class WorkerError(RuntimeError):
    pass


def launch_phase(cfg: Config, run: RunDir, stage: str) -> tuple[list[dict], str | None]:
    """Run GRPO ``stage`` through ``hardware.launcher`` (unless its model is already saved);
    return the phase's log history and health-guard verdict from the record saved with the model."""
    done = _launched(cfg, run, stage, ["grpo"], run.output(stage), "worker")
    return list(done.get("log_history", [])), done.get("guard")


def launch_member(cfg: Config, run: RunDir, stage: str, member: int) -> dict:
    """Committee member ``member``'s SFT of reasoner ``stage`` through ``hardware.launcher`` (unless its
    model is already saved); the phase record saved with its model (log history)."""
    return _launched(cfg, run, stage, ["sft", str(member)], run.member_output(stage, member), f"member{member}")


def _launched(cfg: Config, run: RunDir, stage: str, job: list[str], out_dir: Path, log_name: str) -> dict:
    """``{launcher} -m visplay.evolve.worker JOB[0] RUN STAGE JOB[1:]``, waited for; the record of ``out_dir``."""
    done = finished_phase(out_dir)
    if done is None:
        launcher = (cfg.hardware.launcher.replace("{python}", shlex.quote(sys.executable))
                    .replace("{repo}", shlex.quote(str(REPO_ROOT))))
        cmd = (f"{launcher} -m visplay.evolve.worker {job[0]} {shlex.quote(str(run.root))} {shlex.quote(stage)}"
               + "".join(f" {shlex.quote(a)}" for a in job[1:]))
        log = run.log_path(stage, log_name)
        _run_logged(cmd, log, shell=True)
        done = finished_phase(out_dir)
        if done is None:
            raise WorkerError(f"{stage}: `{cmd}` finished but saved no model in {out_dir}; see {log}")
    return done


def _gpu_for(rank: int) -> str | None:
    """The device string for shard ``rank``: the rank-th visible GPU (None: no GPU, or fewer GPUs than shards)."""
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        return None
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(n)))).split(",") if d]
    return visible[rank % len(visible)]


def run_sharded_stage(cfg: Config, run: RunDir, stage: str, items, key, row_key) -> list[dict]:
    """Start ``hardware.generation_shards`` shard workers, wait for all, merge their rows by item."""
    world = cfg.hardware.generation_shards
    run_workers(run, stage, [(["shard", str(rank), str(world)], f"shard{rank}") for rank in range(world)], world)
    return gather_shards(run.parts(stage), items, world, cfg.evolve.chunk_size, key, row_key)


def run_workers(run: RunDir, stage: str, jobs: list[tuple[list[str], str]], slots: int) -> None:
    """``python -m visplay.evolve.worker <job> RUN STAGE <args>`` for each (args, log name) in
    ``jobs``, all at once, job r on GPU r or on its share of the CPU cores; wait for all."""
    procs = []
    for rank, (args, name) in enumerate(jobs):
        env = worker_env()
        gpu = _gpu_for(rank)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        else:  # CPU: the cores split between the workers (two 2-thread processes on 2 cores spin-wait ~10x slower)
            env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // slots)))
        cmd = [sys.executable, "-m", "visplay.evolve.worker", args[0], str(run.root), stage, *args[1:]]
        log = run.log_path(stage, name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            procs.append((name, log, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)))
    failed = []
    for name, log, proc in procs:
        if proc.wait() != 0:
            failed.append(f"{name} exited with status {proc.returncode}; end of {log}:\n{_tail(log)}")
    if failed:
        raise WorkerError(f"{stage}: " + "\n".join(failed) + "\nfinished work is kept; resume the run")


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


def _run_logged(cmd: str, log: Path, shell: bool) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        rc = subprocess.run(cmd, shell=shell, stdout=f, stderr=subprocess.STDOUT,
                            env={**worker_env(), "PATH": launcher_path()}).returncode
    if rc != 0:
        raise WorkerError(f"`{cmd}` exited with status {rc}; end of {log}:\n{_tail(log)}")
