"""Committee labels: the vote rule, the labels stage with several samplers, trace keys, config and
preflight errors, and one micro committee loop on the shipped models (co-evolving, SFT on chains).

In-memory except the loop tests; one runs `visplay evolve` on the default preset (models/tiny-rows + tiny-rows-reversed)
(~1-2 min on one thread). Run: ``pytest -q tests/test_committee.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from faults import VISPLAY_LOOP
from visplay.answers import Grader, agreement
from visplay.answers.committee import committee_votes
from visplay.config import ConfigError, config_from_manifest, load_config
from visplay.evolve.rows import label_questions, png_bytes
from visplay.answers.voting import majority_vote_batch
from visplay.io import image_bytes
from visplay.sampling.base import SamplingParams
from visplay.worlds.trace import follows_from_listing, listing_complete, trace_key
from visplay.worlds.scene import WorldConfig, make_scene

#: the default preset's oracle-level ablation: the world ladder on levels 6-8 instead of the surveyed pool
LADDER = ("--set", "evolve.ladder=true", "--set", "evolve.survey_images=0", "--set", "evolve.source_objects=[6,8]")


def test_one_member_is_the_plain_majority_vote() -> None:
    for answers in (["3", "3", "4", None], ["1/2", "0.5", "2"], [None, None], ["7"]):
        (v,) = committee_votes([[answers]])
        (plain,) = majority_vote_batch([answers])
        assert (v.label, v.agreement, v.count, v.answered) == (plain.label, agreement(plain), plain.count, plain.total)


def test_members_must_agree_and_the_weakest_share_counts() -> None:
    agree, split = committee_votes([[["3", "3", "4"], ["3.0", "3", "3"]], [["3", "3", "3"], ["4", "4", "3"]]])
    assert agree.label == "3" and agree.agreement == pytest.approx(2 / 3)
    assert agree.member_labels == ["3", "3.0"] and agree.member_agreement == pytest.approx([2 / 3, 1.0])
    assert agree.chains == [[0, 1], [0, 1, 2]]  # equivalent spellings count as agreeing chains
    assert split.label is None and split.reason == "committee members disagree"


def test_trace_agreement_rejects_a_right_answer_over_a_different_listing() -> None:
    good = "<think>a1 red 1. b2 blue -</think>\\boxed{1}"
    reordered = "<think>b2 blue -. a1 red 1</think>\\boxed{1}"  # same objects, other order: same key
    dropped = "<think>a1 red 1</think>\\boxed{1}"  # the same answer, one object not listed
    q = "How many red objects are there?"
    assert trace_key(q, good, "1") == trace_key(q, reordered, "1") != trace_key(q, dropped, "1")
    members = [[good, good, reordered], [dropped, dropped, good]]
    answers = [[["1"] * 3, ["1"] * 3]]
    keys = [[[trace_key(q, s, "1") for s in m] for m in members]]
    (by_answer,) = committee_votes(answers, keys, mode="answer")
    (by_trace,) = committee_votes(answers, keys, mode="trace")
    assert by_answer.label == "1" and by_trace.label is None
    (no_key,) = committee_votes(answers, [None], mode="trace")  # a task without a key: voted on answers
    assert no_key.label == "1"


def test_a_chain_whose_answer_does_not_follow_from_its_own_listing_has_no_key() -> None:
    # session 9: above the labelled levels a walk and its reverse list the same objects and both
    # mark the last one as a hit; the key checks the marks against the trace's own listing
    q = "How many objects are red or blue?"
    right = "<think>a: a1 red 1. b: b2 green -. c: c3 blue 2</think>\\boxed{2}"
    last_marked = "<think>a: a1 red 1. b: b2 green -. c: c3 blue 2. d: d4 yellow 3</think>\\boxed{3}"
    bad_tally = "<think>a1 red 1. b2 green -. c3 blue 3</think>\\boxed{3}"
    unmarked = "<think>a1 red 1. b2 green. c3 blue 2</think>\\boxed{2}"
    wrong_box = "<think>a1 red 1. b2 green -. c3 blue 2</think>\\boxed{3}"
    assert follows_from_listing(q, right, "2") and trace_key(q, right, "2") == "a1 red. b2 green. c3 blue => 2"
    for chain, answer in ((last_marked, "3"), (bad_tally, "3"), (unmarked, "2"), (wrong_box, "3")):
        assert not follows_from_listing(q, chain, answer) and trace_key(q, chain, answer) is None, chain
    assert follows_from_listing("How many objects are red or blue?", "<think>none</think>\\boxed{0}", "0")
    other = "What colour is the object in a1? A. red B. blue"  # not a colour count: nothing to check
    assert follows_from_listing(other, "<think>a1 red</think>\\boxed{A}", "A")
    # the labels stage keys through it: a member whose chains contradict themselves agrees on nothing
    rows = [{**_row("world/unlabeled/1"), "question": q, "true_answer": "2"}]
    with Grader(workers=0) as g:
        (split,) = label_questions([_Says([right] * 2), _Says([last_marked] * 2)], rows, 2, SamplingParams(), g,
                                   (0.0, 1.0), mode="trace")
        (agreed,) = label_questions([_Says([right] * 2), _Says([right, last_marked])], rows, 2, SamplingParams(), g,
                                    (0.0, 1.0), mode="trace")
    assert split["label"] is None and not split["kept"]
    assert agreed["label"] == "2" and agreed["agreement"] == 0.5 and agreed["chains"] == [[right] * 2, [right]]


def test_chain_agreement_knows_no_task_but_tells_which_object_was_counted() -> None:
    """`chain_key` reads no grammar: two walks in opposite orders (different running tallies) that state
    the same objects agree; two walks whose wrong last mark lands on different objects (session 9's
    failure, which the world's verifier catches) do not, though their answers and token bags match."""
    from visplay.answers.committee import chain_key

    fwd = "<think>a: a1 red 1. b: none. c: c3 blue -. c4 red 2</think>\\boxed{2}"
    rev = "<think>c: c4 red 1. c3 blue -. b: none. a: a1 red 2</think>\\boxed{2}"
    assert chain_key(fwd, "2") == chain_key(rev, "2") is not None
    # a red count over a1 green, b2 red, c4 green: each walk marks its last (green) object too
    wrong_fwd = "<think>a: a1 green -. b: b2 red 1. c: c4 green 2</think>\\boxed{2}"
    wrong_rev = "<think>c: c4 green -. b: b2 red 1. a: a1 green 2</think>\\boxed{2}"
    assert chain_key(wrong_fwd, "2") != chain_key(wrong_rev, "2")
    assert chain_key(fwd, "3") != chain_key(fwd, "2") and chain_key(fwd, None) is None and chain_key(None, "2") is None
    votes = committee_votes([[["2", "2"], ["2", "2"]]], [[[chain_key(fwd, "2")] * 2, [chain_key(rev, "2")] * 2]],
                            mode="chain")
    assert votes[0].label == "2" and votes[0].chains == [[0, 1], [0, 1]]


def test_listing_complete_is_exact() -> None:
    scene = make_scene("heldout", 3, WorldConfig(min_objects=3, max_objects=3))
    walk = ". ".join(f"{o.cell} {o.colour} -" for o in scene.objects)
    assert listing_complete(scene, f"<think>{walk}</think>\\boxed{{0}}")
    assert not listing_complete(scene, f"<think>{walk.rsplit('. ', 1)[0]}</think>\\boxed{{0}}")
    assert not listing_complete(scene, "no trace")


class _Says:
    """A labeller whose samples for every question are ``texts``; remembers its seeds."""

    def __init__(self, texts):
        self.texts, self.seeds = texts, []

    def generate(self, prompts, params):
        self.seeds.append(params.seed)
        return [list(self.texts) for _ in prompts]


def _row(image_id: str) -> dict:
    return {"image_id": image_id, "sample": 0, "valid": True, "reason": "ok", "question": "How many red objects are there?",
            "image_png": png_bytes(Image.new("RGB", (8, 8))), "questioner_answer": "1", "true_answer": "1"}


def test_the_labels_stage_samples_every_member_and_records_them() -> None:
    full, short = "<think>a1 red 1. b2 blue -</think>\\boxed{1}", "<think>a1 red 1</think>\\boxed{1}"
    a, b = _Says([full] * 3), _Says([full, full, short])
    with Grader(workers=0) as g:
        world, other = label_questions([a, b], [_row("world/unlabeled/5"), _row("folder/x.png")], 3,
                                       SamplingParams(seed=4), g, (0.6, 1.0), mode="trace")
    assert a.seeds[0] != b.seeds[0]  # members draw independent samples
    assert world["label"] == "1" and world["kept"] and world["agreement"] == pytest.approx(2 / 3)
    assert world["member_labels"] == ["1", "1"] and len(world["samples"]) == 6
    assert world["chains"] == [[full] * 3, [full, full]] and world["label_correct"] is True
    assert other["label"] == "1" and other["agreement"] == 1.0  # no trace key outside the world: answers
    with Grader(workers=0) as g:
        (strict,) = label_questions([a, _Says([short] * 3)], [_row("world/unlabeled/5")], 3, SamplingParams(), g,
                                    (0.0, 1.0), mode="trace")
    assert strict["label"] is None and strict["skip_reason"] == "committee members disagree" and not strict["kept"]


def test_the_band_guards_only_the_rounds_from_band_low_from_on(tmp_path) -> None:
    """`evolve.band_low_from`: the labels stage of an earlier round keeps a label the members are
    unsure of (c = 2/3), the same samples from that round on drop it under `band_low`."""
    from visplay import modes
    from visplay.evolve.context import Context
    from visplay.evolve.sampling_stages import chunk_fn
    from visplay.run.rundir import RunDir

    full, short = "<think>a1 red 1. b2 blue -</think>\\boxed{1}", "<think>a1 red 1</think>\\boxed{1}"
    cfg = load_config("tiny", ["evolve.band_low=0.75", "evolve.band_low_from=3", "evolve.label_samples=3"])
    run = RunDir(tmp_path / "run")
    kept = {}
    with Grader(workers=0) as g:
        for t in (1, 2, 3, 4):
            members = [_Says([full] * 3), _Says([full, full, short])]
            (row,) = chunk_fn(Context(cfg, run, Path("base"), t, g), "labels", members)([_row("world/unlabeled/5")], 0)
            assert row["label"] == "1" and row["agreement"] == pytest.approx(2 / 3)
            kept[t] = row["kept"]
    assert kept == {1: True, 2: True, 3: False, 4: False}
    assert modes.labelling_rule(cfg.evolve).endswith("kept when c is in [0, 1] before iteration 3, [0.75, 1] from it")
    with pytest.raises(ConfigError, match="evolve.band_low_from must be an iteration >= 1"):
        load_config("tiny", ["evolve.band_low_from=0"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["evolve.agreement=votes"], "evolve.agreement must be one of"),
    (["evolve.coevolve=true", "evolve.committee=[walk-random]"], "evolve.coevolve trains"),
    (["evolve.coevolve=true", "evolve.reasoner_objective=sft"], "at least one evolve.committee member"),
    (["evolve.coevolve=true", "evolve.reasoner_objective=sft", "evolve.committee=[url=http://127.0.0.1:9/v1]"],
     "cannot train a url= committee member"),
    (["evolve.committee=[url=ftp://x]"], "evolve.committee"),
    (["evolve.reasoner_objective=dpo"], "evolve.reasoner_objective"),
    (["evolve.sft_lr=0"], "evolve.sft_lr"),
    (["evolve.sft_schedule=step"], "evolve.sft_schedule must be one of"),
    (["evolve.sft_warmup=1"], "evolve.sft_warmup must be in"),
    (["evolve.replay_images=-1"], "evolve.replay_images must be >= 0"),
    (["evolve.replay_images=8", "evolve.ladder=false"], "needs evolve.ladder=true"),
])
def test_bad_committee_config_is_one_clear_error(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", VISPLAY_LOOP + overrides)


def test_sft_follows_its_schedule_warming_up_then_decaying_to_zero(micro_model_dir, tmp_path) -> None:
    """The member SFT's learning rate: constant stays at the peak; cosine with warmup climbs, then
    ends near zero, so a round's last steps barely move the weights it hands on."""
    from visplay.evolve.sft import chain_rows, train_sft
    from visplay.models import load_model

    scenes = [make_scene("unlabeled", i, WorldConfig(grid=5, min_objects=1, max_objects=3)) for i in range(4)]
    rows = chain_rows([{"kept": True, "question": "How many objects are there?", "image_id": f"s{i}", "sample": 0,
                        "image_png": png_bytes(s.render()), "chains": [[f"<think>{s.level}</think>\\boxed{{{s.level}}}"]]}
                       for i, s in enumerate(scenes)])
    lrs = {}
    for schedule, warmup in (("constant", 0.0), ("cosine", 0.25)):
        model, processor = load_model(micro_model_dir)
        _, history = train_sft(model, processor, rows, tmp_path / schedule, epochs=20, batch_size=2, lr=1e-3,
                               seed=0, schedule=schedule, warmup=warmup)
        lrs[schedule] = [h["learning_rate"] for h in history if "learning_rate" in h]
    assert len(lrs["constant"]) == 4 and set(lrs["constant"]) == {1e-3}  # logged every 10 of 40 steps
    cosine = lrs["cosine"]  # steps 10 (warmup's end), 20, 30, 40
    assert cosine[0] >= 0.8e-3 and cosine[0] > cosine[1] > cosine[2] > cosine[3] and cosine[3] < 1e-5


def test_a_member_that_does_not_load_fails_before_the_run_exists(tmp_path, capsys) -> None:
    from visplay.cli import main

    run = tmp_path / "run"
    code = main(["evolve", "--run", str(run), "--set", f"evolve.committee=[{tmp_path / 'nope'}]"])
    assert code != 0 and not run.exists()
    assert "evolve.committee member" in capsys.readouterr().err


def test_micro_committee_loop_coevolves_and_its_models_load(tmp_path) -> None:
    """The default preset on its oracle-level ablation (the world ladder 6 -> 7 with replay), shrunk:
    two iterations of models/tiny-rows + models/tiny-rows-reversed,
    trace agreement, SFT on each member's own agreeing chains, replay: labels record both members,
    both members train, the second round's committee is the first round's trained members, and
    every saved model loads."""
    from transformers import AutoModelForImageTextToText

    from visplay.cli import main

    run = tmp_path / "run"
    code = main(["evolve", "--run", str(run), "--quiet", "--set", "evolve.iterations=2", *LADDER,
                 "--set", "evolve.images_per_iteration=16", "--set", "evolve.replay_images=8",
                 "--set", "evolve.questioner_images=4",
                 "--set", "evolve.questioner.steps=1", "--set", "evolve.label_samples=4", "--set", "evolve.sft_epochs=1",
                 "--set", "eval.n=24", "--set", "eval.k=2"])
    assert code == 0
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    labels = pq.read_table(run / "iter1" / "labels.parquet").to_pylist()
    labelled = [r for r in labels if r["label"] is not None]
    assert labelled and all(len(r["member_labels"]) == 2 and len(r["chains"]) == 2 for r in labelled)
    assert all(len(r["samples"]) == 8 for r in labels if r["valid"])  # 4 samples from each member
    # replay: 8 scenes from the levels below the ladder's level (1-5 in round 1, 1-6 in round 2)
    assert sorted({r["level"] for r in labels} - {6}) and max(r["level"] for r in labels if r["level"] != 6) <= 5
    assert len({r["image_id"] for r in labels}) == 24
    second_labels = pq.read_table(run / "iter2" / "labels.parquet").to_pylist()
    assert {r["level"] for r in second_labels} <= {1, 2, 3, 4, 5, 6, 7} and 7 in {r["level"] for r in second_labels}
    cfg = config_from_manifest(json.loads((run / "manifest.json").read_text())["config"])
    for t, rows in ((1, labels), (2, second_labels)):  # the recorded level and image are the drawing world's
        for r in rows:
            index = int(r["image_id"].rsplit("/", 1)[1])
            scene = make_scene("unlabeled", index, cfg.scene_world(t, index))
            assert r["level"] == scene.level and image_bytes(r["image_png"]) == png_bytes(scene.render())
    first = stages["iter1/reasoner"]
    assert first["objective"] == "sft" and first["train_rows"] > 0 and len(first["committee"]) == 1
    assert first["committee"] == ["iter1/committee1"]  # run-relative, like every model path
    member = run / first["committee"][0]
    for path in (run / "iter1" / "reasoner", member, run / "iter2" / "reasoner"):
        AutoModelForImageTextToText.from_pretrained(path)
    second = json.loads((run / "iter2" / "eval" / "summary.json").read_text())
    assert any(v.get("listing_complete") is not None for v in second["by_level"].values())


def test_a_round_the_committee_agrees_on_nothing_ends_the_run(micro_model_dir, tmp_path) -> None:
    """The random micro model writes no valid question, so the committee agrees on nothing: the run
    stops at that round's reasoner with the reason, and no later stage runs."""
    from visplay.evolve.loop import run_evolve

    cfg = load_config("tiny", [f"model={micro_model_dir}", "evolve.iterations=2", "evolve.committee=[tiny]",
                               "evolve.questioner.steps=1", "evolve.questioner_images=2",
                               "evolve.images_per_iteration=4", "evolve.label_samples=2", "evolve.max_new_tokens=8",
                               "evolve.questioner.max_completion_length=8", "eval.n=4", "eval.k=1",
                               "eval.max_new_tokens=8", "evolve.report_to=[]"])
    said: list[str] = []
    results = run_evolve(cfg, tmp_path / "run", say=said.append)
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["iter1/labels"]["n_kept"] == 0
    assert stages["iter1/reasoner"]["stopped"] and "agreed on no question" in stages["iter1/reasoner"]["skipped"]
    assert "iter1/eval" not in stages and "iter2/questioner" not in stages and set(results) == {0}
    assert any("stopped: the committee agreed on no question" in s for s in said)


@pytest.mark.parametrize("short, stops", [(1, True), (0, False)])
def test_a_round_that_keeps_fewer_than_min_kept_labels_ends_the_run(tmp_path, short, stops) -> None:
    """`evolve.min_kept`: a committee round whose labels thinned out under it ends the run before
    training, with the reason; at the threshold it trains (here: on no kept row, so it carries over)."""
    from visplay.evolve.context import Context
    from visplay.evolve.steps import run_reasoner
    from visplay.io import atomic_write_parquet
    from visplay.run.rundir import RunDir

    cfg = load_config("tiny-long", ["evolve.accumulate_labels=false"])
    assert cfg.evolve.min_kept > 1 and cfg.evolve.committee
    kept = cfg.evolve.min_kept - short
    run = RunDir(tmp_path / "run")
    run.create({}, [])
    atomic_write_parquet(run.output("iter1/labels"), [{"kept": False, "label": None}])
    run.mark("iter1/labels", "done", n_kept=kept)
    said: list[str] = []
    with Grader(workers=0) as grader:
        info = run_reasoner(Context(cfg, run, Path("base"), 1, grader, say=said.append))
    assert info["model"] == "base" and info["train_rows"] == 0
    assert bool(info.get("stopped")) == stops
    if stops:
        assert info["skipped"] == f"the committee kept {kept} labels in iteration 1, under evolve.min_kept {kept + 1}"
        assert said == [f"iter1/reasoner: stopped: {info['skipped']}; the run ends with the reasoner of iteration 0"]


def test_the_ladder_repeats_a_level_until_enough_of_it_is_kept(tmp_path) -> None:
    """`evolve.advance_kept_share`: iteration t climbs only if iteration t-1 kept at least that share
    of its own level's questions (replay levels do not count)."""
    from visplay.answers import Grader
    from visplay.config import to_dict
    from visplay.evolve.context import Context
    from visplay.run.rundir import RunDir

    cfg = load_config("tiny", ["evolve.advance_kept_share=0.3", "evolve.iterations=4", *LADDER[1::2]])
    run = RunDir(tmp_path / "run")
    with run:
        run.create(to_dict(cfg), [])
        kept = {1: {"6": {"valid": 10, "kept": 5}, "1": {"valid": 4, "kept": 0}},  # 50 % of level 6: climb
                2: {"7": {"valid": 10, "kept": 1}, "5": {"valid": 9, "kept": 9}},  # 10 % of level 7: repeat
                3: {"7": {"valid": 10, "kept": 3}}}  # 30 %: climb
        for t, mix in kept.items():
            run.mark(f"iter{t}/labels", "done", by_level=mix)
        with Grader(workers=0) as g:
            rungs = [Context(cfg, run, tmp_path, t, g).rung() for t in (1, 2, 3, 4)]
    assert rungs == [1, 2, 2, 3]
    assert [cfg.source_world_at(r).min_objects for r in rungs] == [6, 7, 7, 8]
    with pytest.raises(ConfigError, match="advance_kept_share"):
        load_config("tiny", ["evolve.advance_kept_share=0.3", "evolve.ladder=false"])


def test_replay_draws_world_scenes_only_for_a_world_ladder() -> None:
    ladder = [*LADDER[1::2], "evolve.replay_images=128"]
    world = load_config("tiny", ladder)  # the ablation: a world ladder with replay
    assert world.evolve.replay_images and world.replay_world_at(2).max_objects == 6
    assert world.replay_world_at(1).max_objects == 5  # level 6's replay: the labelled levels
    folder = load_config("tiny", ladder + ["evolve.source=folder:/data/images", "evolve.agreement=answer"])  # real images
    # ... hold no world scenes, so none are mixed in (and have no trace key to agree on)
    assert folder.replay_world_at(2) is None


class _Reached(Exception):
    """Raised where a member's SFT would start training, carrying the call stack that got there."""


def test_cli_reaches_a_members_sft_in_eight_calls_without_looping_back(tmp_path, monkeypatch) -> None:
    """`visplay evolve` on the default recipe -> one committee member's SFT reads as one short chain
    (docs/architecture.md): cli -> loop -> the reasoner's step -> the committee -> the SFT objective,
    never back into the stage bodies."""
    import inspect

    import torch

    import visplay.evolve.sft
    from visplay.cli import main

    def stop(*args, **kwargs):
        raise _Reached([(f.function, Path(f.filename).name) for f in inspect.stack()])

    monkeypatch.setattr(visplay.evolve.sft, "train_sft", stop)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one slot: the members train in this process, one after the other
    try:
        with pytest.raises(_Reached) as reached:
            main(["evolve", "--run", str(tmp_path / "run"), "--quiet", "--set", "evolve.iterations=1",
                  "--set", "evolve.survey_images=24", "--set", "evolve.images_per_iteration=12",
                  "--set", "evolve.questioner_images=4", "--set", "evolve.questioner.steps=1",
                  "--set", "evolve.label_samples=2", "--set", "evolve.sft_epochs=1", "--set", "evolve.chunk_size=8",
                  "--set", "eval.n=12", "--set", "eval.k=1", "--set", "evolve.report_to=[]"])
    finally:
        torch.set_num_threads(threads)
    stack = reached.value.args[0]
    chain = list(reversed(stack[1:[f for f, _ in stack].index("main") + 1]))
    assert [f for f, _ in chain] == ["main", "run", "run_evolve", "_run_step", "run_reasoner", "train", "train_member",
                                     "fine_tune"]  # then train_sft: 8 calls from cli.main
    assert [name for _, name in chain[1:]] == ["evolve.py", "loop.py", "loop.py", "steps.py", "committee.py",
                                               "committee.py", "sft.py"]  # 5 files from cli/evolve.py
