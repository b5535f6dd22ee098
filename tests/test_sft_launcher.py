"""The committee recipe's SFT under ``hardware.launcher``, end to end, killed and resumed for real.

The default preset (models/tiny-rows + tiny-rows-reversed, trace agreement, both members SFT-trained on
their own agreeing chains), shrunk to one iteration with a frozen questioner, runs three ways:
in process; with ``hardware.launcher`` = torchrun with 2 processes (gloo on CPU: DDP), each member's SFT
launched as ``worker sft`` on both ranks, one member after the other; and the launched run SIGKILLed
while member 0's SFT has written a mid-phase checkpoint, then ``--resume``d (the fault harness,
tests/faults.py). Proves: the launched run keeps exactly the in-process labels, trains each member on
both ranks for the same steps, and its models load; the killed run resumes from the checkpoint (no
member model was saved before the kill) to the uncrashed launched run's rows and bit-identical weights.
Offline, about 3 minutes on 2 cores: `pytest -q tests/test_sft_launcher.py`.
"""

from __future__ import annotations

import json
import signal
import sys

import pyarrow.parquet as pq
import pytest
import torch

import faults
from faults import KillPoint

pytestmark = [pytest.mark.faults, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")]

#: The default preset's committee SFT, one small iteration (8 steps per member: 2 epochs of ~7 chains, batch 2).
RECIPE = [
    "evolve.iterations=1", "evolve.train_questioner=false", "evolve.survey_images=0", "evolve.source_objects=[2,4]",
    "evolve.images_per_iteration=8", "evolve.chunk_size=4", "evolve.label_samples=2", "evolve.sft_epochs=4",
    "evolve.sft_batch_size=2", "eval.n=12", "eval.k=1", "evolve.max_new_tokens=48", "eval.max_new_tokens=48",
    "evolve.report_to=[]", "evolve.grader_workers=1",
]
LAUNCHED = RECIPE + ["hardware.launcher='{python} -m torch.distributed.run --nproc_per_node 2'"]
MEMBERS = ("reasoner", "committee1")


def _kept(run) -> list[tuple]:
    rows = pq.read_table(run / "iter1/labels.parquet").to_pylist()
    return [(r["image_id"], r["sample"], r["question"], r["label"], [list(c) for c in r["chains"]])
            for r in rows if r["kept"]]


def _sft_steps(run) -> dict[int, list[int]]:
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {m: [h["step"] for h in logged if h.get("member") == m and "train_loss" in h] for m in (0, 1)}


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_committee_sft_under_the_launcher_matches_in_process_and_a_kill_mid_sft_resumes(tmp_path):
    from transformers import AutoModelForImageTextToText

    from visplay.config import EMBEDDED_MODELS, load_config
    from visplay.evolve.loop import run_evolve
    from visplay.models import last_checkpoint

    here = tmp_path / "in-process"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one slot: the members train in this process, one after the other
    try:
        run_evolve(load_config("tiny", RECIPE), here, say=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    launched = tmp_path / "launched"
    timeline = faults.reference_run(launched, LAUNCHED, tmp_path / "launched.log")
    assert "iter1/reasoner" in timeline.stages
    kept = _kept(here)
    assert kept and _kept(launched) == kept  # the launcher changes where the SFT runs, never the labels
    steps = _sft_steps(here)
    assert steps[0] and steps[1] and _sft_steps(launched) == steps
    for member in (0, 1):
        log = (launched / f"iter1/reasoner.member{member}.log").read_text()
        assert f"member {member}, rank 0 of 2" in log and f"member {member}, rank 1 of 2" in log
    base = _weights(EMBEDDED_MODELS["tiny-rows"])
    for name in MEMBERS:
        AutoModelForImageTextToText.from_pretrained(launched / "iter1" / name)  # plain HF checkpoints
    assert any(not torch.equal(base[k], v) for k, v in _weights(launched / "iter1/reasoner").items())

    # SIGKILL the launched run once member 0's SFT has a complete checkpoint, then resume it
    run, log = tmp_path / "run", tmp_path / "run.log"
    stages = faults.stage_names(1)
    proc = faults.start_evolve(run, LAUNCHED, resume=False, log=log)
    kill = faults.strike(proc, run, KillPoint("iter1/reasoner", "checkpoint", 2), stages, timeline)
    assert kill.reached and kill.landed == "iter1/reasoner" and kill.exit_code == -signal.SIGKILL, proc.output()[-3000:]
    assert kill.ok, (kill.problems, kill.orphans)  # the workers behind the launcher left with the loop
    done = faults.done_stages(run)
    assert "iter1/labels" in done and "iter1/reasoner" not in done and not (run / "iter1/reasoner").exists()
    assert last_checkpoint(run / "iter1/reasoner.ckpt") is not None  # what the resumed worker continues from
    assert faults.finish(faults.start_evolve(run, LAUNCHED, resume=True, log=log), run) == 0, log.read_text()[-3000:]
    comparison = faults.compare(launched, run)
    assert comparison.ok, comparison
    assert (run / "iter1/reasoner.member0.log").read_text().count("member 0, rank 0 of 2") == 2  # launched again
    assert _sft_steps(run) == steps
    for name in MEMBERS:
        want, got = _weights(launched / "iter1" / name), _weights(run / "iter1" / name)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
