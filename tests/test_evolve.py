"""The self-evolution loop end to end: every stage's outputs, the manifest, resume, the lock.

`test_full_tiny_loop` runs one short iteration of the real loop on the shipped tiny model (about
a minute on 2 cores): questioner GRPO, questions, silver labels, reasoner GRPO, evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faults import VISPLAY_LOOP
from visplay.config import EMBEDDED_MODELS, load_config
from visplay.evolve.loop import run_evolve
from visplay.run.rundir import RunDir, RunError
from visplay.models import load_model

SHORT = VISPLAY_LOOP + [
    "model=tiny", "evolve.iterations=1", "evolve.questioner.steps=2", "evolve.questioner.prompts_per_step=2",
    "evolve.questioner.num_generations=2", "evolve.questioner_images=4", "evolve.images_per_iteration=12",
    "evolve.reward_samples=3", "evolve.label_samples=4", "evolve.band_low=0", "evolve.band_high=1",
    "evolve.reasoner.steps=2", "evolve.reasoner.prompts_per_step=2", "evolve.reasoner.num_generations=2",
    "eval.n=6", "eval.k=2", "evolve.report_to=[]", "evolve.grader_workers=0",
]
STAGES = ["iter0/eval", "iter1/questioner", "iter1/questions", "iter1/labels", "iter1/reasoner", "iter1/eval"]


def test_micro_loop_manifest_resume_and_lock(micro_model_dir, tmp_path):
    cfg = load_config("tiny", SHORT + [f"model={micro_model_dir}", "evolve.max_new_tokens=8",
                                       "evolve.questioner.max_completion_length=8", "eval.max_new_tokens=8"])
    run = tmp_path / "run"
    said: list[str] = []
    results = run_evolve(cfg, run, say=said.append)
    assert set(results) == {0, 1}
    m = json.loads((run / "manifest.json").read_text())
    assert [s for s in STAGES if m["stages"][s]["state"] == "done"] == STAGES
    assert m["config"]["model"] == str(micro_model_dir)
    assert m["software"]["versions"]["transformers"] and len(m["software"]["git_commit"] or "x" * 40) == 40
    # the random micro model writes no valid question: counted, and the reasoner is carried over
    assert m["stages"]["iter1/reasoner"]["skipped"] == "no kept questions"
    assert m["stages"]["iter1/labels"]["skipped"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {x["stage"] for x in lines} >= set(STAGES)
    # the report and status on a run whose reasoner never trained (no kept question): an error fails here
    from visplay.report import write_report
    from visplay.cli import main as cli_main

    html = write_report(run).read_text()
    assert all(s in html for s in STAGES) and "final-model" in html
    assert "data-section-error" not in html  # a section that failed renders as an error box
    assert cli_main(["status", str(run)]) == 0
    # resuming a finished run redoes nothing
    said.clear()
    run_evolve(cfg, run, resume=True, say=said.append)
    assert all("resumed" in s for s in said)
    with pytest.raises(RunError, match="already exists"):
        run_evolve(cfg, run)
    changed = load_config("tiny", SHORT + [f"model={micro_model_dir}", "evolve.seed=5"])
    with pytest.raises(ValueError, match="another config"):
        run_evolve(changed, run, resume=True)
    with RunDir(run), pytest.raises(RunError, match="in use"):
        RunDir(run).lock()


def test_resume_without_run(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        run_evolve(load_config("tiny", SHORT), tmp_path / "none", resume=True)


def test_full_tiny_loop(tmp_path):
    assert (EMBEDDED_MODELS["tiny"] / "config.json").is_file(), "the shipped model models/tiny is missing"
    cfg = load_config("tiny", SHORT)
    run = tmp_path / "run"
    results = run_evolve(cfg, run, say=print)
    m = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(m[s]["state"] == "done" for s in STAGES)
    questions = pq.read_table(run / "iter1/questions.parquet").to_pylist()
    assert len(questions) == 12 and sum(q["valid"] for q in questions) >= 6
    assert len({q["image_id"] for q in questions}) == 12
    assert any(q["true_answer"] is not None for q in questions)  # the world's oracle answered
    labels = pq.read_table(run / "iter1/labels.parquet").to_pylist()
    assert [r["image_id"] for r in labels] == [q["image_id"] for q in questions]  # one row per question, in order
    labeled = [r for r in labels if r["label"] is not None]
    assert labeled and all(len(r["samples"]) == 4 and r["agreement"] == r["count"] / 4 for r in labeled)
    assert all(r["skip_reason"] for r in labels if r["label"] is None)
    assert m["iter1/reasoner"]["train_rows"] == sum(r["kept"] for r in labels) > 0
    for d in ("iter1/questioner", "iter1/reasoner"):
        model, _ = load_model(run / d)
        assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    q_steps = [x for x in logged if x["stage"] == "iter1/questioner" and "questioner/valid" in x]
    assert len(q_steps) == 2 and all({"questioner/uncertainty", "questioner/diversity_penalty"} <= set(x) for x in q_steps)
    assert any("reasoner/accuracy" in x for x in logged if x["stage"] == "iter1/reasoner")
    items = pq.read_table(run / "iter1/eval/items.parquet").to_pylist()
    assert results[1]["greedy"] == sum(r["greedy_correct"] for r in items) / len(items)  # what the manifest reports
    assert sum(v["n"] for v in results[1]["by_level"].values()) == len(items) == 6
    labelled = [r["greedy_correct"] for r in items if r["level"] <= 5]
    if labelled:
        assert results[1]["greedy_labelled"] == sum(labelled) / len(labelled)


def test_health_guard_stops_a_grpo_phase(micro_model_dir, tmp_path):
    import itertools

    from visplay.answers import Grader
    from visplay.config import GRPOPhase
    from visplay.data.sources import WorldSource
    from visplay.evolve.rows import questioner_dataset
    from visplay.sampling.hf import TransformersSampler
    from visplay.rewards.questioner import QuestionerReward
    from visplay.evolve.grpo import train_grpo
    from visplay.worlds.scene import WorldConfig

    model, processor = load_model(micro_model_dir)  # a private copy: this test trains it
    items = list(itertools.islice(WorldSource(WorldConfig(), "unlabeled"), 4))
    phase = GRPOPhase(steps=3, prompts_per_step=2, num_generations=2, max_completion_length=4, max_kl=-1.0)
    with Grader(workers=0) as g:
        reward = QuestionerReward(TransformersSampler(model, processor), g, m=2, max_new_tokens=4)
        out, history, guard = train_grpo(model, processor, questioner_dataset(items), reward, phase, tmp_path / "q")
    assert guard == "kl 0 > -1 at step 1"
    assert [h["step"] for h in history if "kl" in h] == [1]  # stopped after the first step, not 3
    assert (out / "config.json").is_file()


def test_the_drift_guard_keeps_the_previous_questioner_when_fewer_questions_parse(micro_model_dir, tmp_path):
    """`evolve.min_valid_share`: a trained questioner whose questions stop parsing (here the random
    micro model: none do) is replaced by its predecessor (the shipped one: nearly all do); a trained
    one above the floor is kept without sampling the predecessor."""
    import itertools

    from visplay.answers import Grader
    from visplay.config import to_dict
    from visplay.data.sources import WorldSource
    from visplay.evolve.context import Context
    from visplay.evolve.steps import kept_questioner
    from visplay.worlds.scene import WorldConfig

    cfg = load_config("tiny", ["evolve.min_valid_share=0.9", "evolve.max_new_tokens=48"])
    shipped = EMBEDDED_MODELS["tiny-rows"]
    items = list(itertools.islice(WorldSource(WorldConfig(min_objects=6, max_objects=6), "unlabeled"), 6))
    run = RunDir(tmp_path / "run")
    with run, Grader(workers=0) as g:
        run.create(to_dict(cfg), [])
        run.mark("iter1/questioner", "done", model=str(shipped))
        ctx = Context(cfg, run, shipped, 2, g, say=lambda s: None)
        model, verdict = kept_questioner(ctx, items, micro_model_dir)
        assert model == shipped and verdict["kept"] == "previous"
        assert verdict["trained"] == 0.0 and verdict["previous"] >= 0.9
        model, verdict = kept_questioner(ctx, items, shipped)
        assert model == shipped and verdict["kept"] == "trained" and "previous" not in verdict


def test_the_stage_list_is_what_the_loop_status_and_report_read():
    import doctest

    import visplay.run.stages as run_stages
    from visplay.evolve.steps import BASELINE_STEP, STEPS
    from visplay.run.rundir import expected_stages

    assert doctest.testmod(run_stages).failed == 0
    assert tuple(s.stage for s in STEPS) == run_stages.STAGES and BASELINE_STEP.stage == run_stages.BY_KIND["eval"]
    manifest = {"config": {"evolve": {"iterations": 2}}, "stages": {}}
    assert expected_stages(manifest) == run_stages.stage_names(2)
    run = RunDir("/r")
    assert run.output("iter2/labels") == Path("/r/iter2/labels.parquet")
    assert run.checkpoints("iter1/reasoner") == Path("/r/iter1/reasoner.ckpt")
    assert run.member_output("iter1/reasoner", 0) == run.output("iter1/reasoner")
    assert run.member_output("iter1/reasoner", 2) == Path("/r/iter1/committee2")
    assert run.parts("iter1/questions") == Path("/r/iter1/questions.parts")
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages.parse_stage("iter0/labels")


class _Reached(Exception):
    """Raised where the GRPO trainer would start training, carrying the call stack that got there."""


def test_cli_reaches_the_grpo_trainer_in_seven_calls(micro_model_dir, tmp_path, monkeypatch):
    """`visplay evolve` -> trainer.train() reads as one short chain of named calls (docs/architecture.md)."""
    import inspect

    import visplay.evolve.grpo
    from visplay.cli import main

    def stop(*args, **kwargs):
        raise _Reached([f.function for f in inspect.stack()])

    monkeypatch.setattr(visplay.evolve.grpo, "train_resumable", stop)
    sets = [a for s in SHORT + [f"model={micro_model_dir}", "evolve.max_new_tokens=8", "eval.max_new_tokens=8",
                                "evolve.questioner.max_completion_length=8"] for a in ("--set", s)]
    with pytest.raises(_Reached) as reached:
        main(["evolve", "--run", str(tmp_path / "run"), "--quiet", *sets])
    stack = reached.value.args[0]
    chain = list(reversed(stack[1:stack.index("main") + 1]))
    assert chain == ["main", "run", "run_evolve", "_run_step", "run_questioner", "train_phase", "train_grpo"]
    assert len(chain) == 7  # calls from cli.main to train_resumable, which calls trainer.train()
