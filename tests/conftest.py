"""Shared fixtures: a micro Qwen2.5-VL built offline in a temp dir (seconds, no network), and the
run directories of one real two-iteration loop on the shipped tiny model (`real_runs`)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from faults import VISPLAY_LOOP
from visplay.arch import ArchConfig
from visplay.tiny.build import build, tiny_arch

_TINY = tiny_arch()
MICRO = ArchConfig(  # the tiny model's layout (M-RoPE sections, tied embeddings, windowed vision), smaller
    text=replace(_TINY.text, vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                 num_attention_heads=1, num_key_value_heads=1),
    vision=replace(_TINY.vision, depth=1, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=(0,)),
)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("micro") / "model", MICRO, seed=0)


@pytest.fixture(scope="session")
def micro(micro_model_dir):
    from visplay.models import load_model

    return load_model(micro_model_dir)


# ---------------------------------------------------------------- one real loop, crashed twice on the way

#: Like `faults.fast_overrides` (the shipped tiny model, a checkpoint after every GRPO step), with two
#: iterations and sized so the run has what the report shows: valid and invalid questions (T = 1.5),
#: labels kept and outside the band (m = 4, band [0.75, 1]), reasoner training, several chunk
#: parts per stage (chunk_size 3), three GRPO steps per phase, two families in the eval.
REAL_RUN_OVERRIDES = VISPLAY_LOOP + [
    "model=tiny", "evolve.iterations=2", "evolve.source_objects=[3,8]", "evolve.ladder=false",
    "evolve.questioner_images=2", "evolve.images_per_iteration=6", "evolve.questions_per_image=2",
    "evolve.chunk_size=3", "evolve.reward_samples=2", "evolve.label_samples=4", "evolve.band_low=0.75",
    "evolve.band_high=1", "evolve.temperature=1.5",
    "evolve.questioner.steps=3", "evolve.questioner.save_steps=1", "evolve.questioner.prompts_per_step=2",
    "evolve.questioner.num_generations=2", "evolve.questioner.max_completion_length=32",
    "evolve.reasoner.steps=3", "evolve.reasoner.save_steps=1", "evolve.reasoner.prompts_per_step=2",
    "evolve.reasoner.num_generations=2", "evolve.reasoner.max_completion_length=64",
    "eval.n=12", "eval.k=2", "eval.max_new_tokens=32", "evolve.max_new_tokens=64",
    "evolve.report_to=[]", "evolve.grader_workers=1", "evolve.grader_timeout=5",
]


@dataclass(frozen=True)
class RealRuns:
    """Snapshots of one real run directory. Treat them as read-only: copy one to change it."""

    finished: Path  # all 11 stages done
    crashed: Path  # SIGKILLed in iter2/labels once its first chunk part was written
    crashed_grpo: Path  # the resume of that, SIGKILLed in iter2/reasoner while checkpoint-2 was written
    seconds: dict  # wall time of each step of the fixture


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> RealRuns:
    """A real `visplay evolve` run (2 iterations, models/tiny, ~40 s on one CPU thread), crashed for real.

    `visplay evolve` runs in a subprocess (the fault harness, tests/faults.py) and is SIGKILLed
    in iter2/labels after its first chunk part: a copy of the run directory then is `crashed`.
    `--resume` is SIGKILLed in iter2/reasoner while checkpoint-2 is being saved: `crashed_grpo`.
    The run is finished in this process by `run_evolve(load_config("tiny", REAL_RUN_OVERRIDES),
    run, resume=True)`, which also checks that the CLI built the same config: `finished`. Each
    kill is checked like the fault tests check theirs (it landed in the stage, nothing orphaned,
    the run directory consistent); the report and status tests then read only these files."""
    from faults import KillPoint, start_evolve, stage_names, strike

    from visplay.config import load_config
    from visplay.evolve.loop import run_evolve

    root = tmp_path_factory.mktemp("real-run")
    run, log = root / "run", root / "evolve.log"
    stages = stage_names(2)
    seconds: dict[str, float] = {}

    def crash(name: str, point: KillPoint, resume: bool) -> Path:
        t0 = time.monotonic()
        proc = start_evolve(run, REAL_RUN_OVERRIDES, resume=resume, log=log)
        kill = strike(proc, run, point, stages, None, timeout=300)
        assert kill.reached and kill.landed == point.stage and kill.ok, \
            f"{point.label}: {kill}\n{proc.output()[-3000:]}"
        snapshot = root / name
        shutil.copytree(run, snapshot, symlinks=True)
        seconds[name] = round(time.monotonic() - t0, 1)
        return snapshot

    crashed = crash("crashed", KillPoint("iter2/labels", "part", 1), resume=False)
    crashed_grpo = crash("crashed_grpo", KillPoint("iter2/reasoner", "checkpoint-partial", 2), resume=True)
    t0 = time.monotonic()
    run_evolve(load_config("tiny", REAL_RUN_OVERRIDES), run, resume=True, say=lambda s: None)
    seconds["finished"] = round(time.monotonic() - t0, 1)
    return RealRuns(run, crashed, crashed_grpo, seconds)
