"""The loop's side of stage workers: start them, wait, read back what they wrote.

* `launch_phase`: a GRPO stage through ``hardware.launcher`` -- the loop runs
  ``{launcher} -m visplay.evolve.worker grpo RUN iter<t>/<role>`` and waits (``{python}`` and
  ``{repo}`` in the launcher become this interpreter and the repository root), then reads the
  phase record saved with the model (``train_result.json``).
* `run_sharded_stage`: ``hardware.generation_shards`` > 1 -- one ``worker shard`` process per
  shard, shard r on GPU r; their parts are merged by item once all have finished.

The workers themselves are `visplay.evolve.worker`; both sides run the stage bodies of
`visplay.evolve.bodies`. Test: `pytest tests/test_shards.py`.
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
    out_dir = run.output(stage)
    done = finished_phase(out_dir)
    if done is None:
        launcher = (cfg.hardware.launcher.replace("{python}", shlex.quote(sys.executable))
                    .replace("{repo}", shlex.quote(str(REPO_ROOT))))
        cmd = f"{launcher} -m visplay.evolve.worker grpo {shlex.quote(str(run.root))} {shlex.quote(stage)}"
        log = run.log_path(stage, "worker")
        _run_logged(cmd, log, shell=True)
        done = finished_phase(out_dir)
        if done is None:
            raise WorkerError(f"{stage}: `{cmd}` finished but saved no model in {out_dir}; see {log}")
    return list(done.get("log_history", [])), done.get("guard")


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
    procs = []
    for rank in range(world):
        env = worker_env()
        gpu = _gpu_for(rank)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "visplay.evolve.worker", "shard", str(run.root), stage, str(rank), str(world)]
        log = run.log_path(stage, f"shard{rank}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            procs.append((rank, log, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)))
    failed = []
    for rank, log, proc in procs:
        if proc.wait() != 0:
            failed.append(f"shard {rank} exited with status {proc.returncode}; end of {log}:\n{_tail(log)}")
    if failed:
        raise WorkerError(f"{stage}: " + "\n".join(failed) + "\nfinished chunks are kept; resume the run")
    return gather_shards(run.parts(stage), items, world, cfg.evolve.chunk_size, key, row_key)


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
