"""The difficulty ladder: marked-walk traces, levels, per-level evaluation, the loop's ladder knobs.

In-memory except for small parquet files in a temp dir; no model beyond the conftest micro model.
Run: `pytest -q tests/test_ladder.py`.
"""

from __future__ import annotations

import random

import pytest

from visplay.config import ConfigError, EvalConfig, load_config
from visplay.eval.probe import _walk_spans, trace_probe
from visplay.eval.world import evaluate_world, level_groups, paired
from visplay.evolve.loop import stop_signal
from visplay.evolve.rows import level_mix, reasoner_rows
from visplay.io import atomic_write_parquet
from visplay.sampling.base import Sampler
from visplay.worlds.questions import FAMILIES, MARKED_FAMILIES, make_question, oracle
from visplay.worlds.scene import WorldConfig, make_scene


def test_marked_walk_marks_every_object_in_reading_order_with_a_running_tally():
    w = WorldConfig(min_objects=1, max_objects=8)
    for i in range(200):
        scene = make_scene("train", i, w)
        q = make_question(scene, random.Random(i), MARKED_FAMILIES)
        parts = q.think.split(". ")
        assert [p.split(" ")[0] for p in parts] == [o.cell for o in scene.objects]
        marks = [p.split(" ")[-1] for p in parts]
        tallies = [int(m) for m in marks if m != "-"]
        assert tallies == list(range(1, len(tallies) + 1))  # 1, 2, 3, ... at the matching objects
        assert str(len(tallies)) == q.answer == oracle(scene, q.text)
        assert scene.level == len(scene.objects) == len(parts)


def test_walk_spans_name_each_attribute_and_mark():
    think = "a1 small red circle 1. b3 blue -"
    spans = [(role, think[a:b]) for role, a, b in _walk_spans(think)]
    assert spans == [("perception", "small"), ("perception", "red"), ("perception", "circle"), ("comparison", "1"),
                     ("perception", "blue"), ("comparison", "-")]


def test_trace_probe_counts_every_decisive_token(micro):
    model, processor = micro
    w = WorldConfig(min_objects=2, max_objects=3)
    r = trace_probe(model, processor, w, ("count",), n=6, batch_size=4)
    # one comparison per object and at least one attribute word per object, each level reported
    items = [make_question(make_scene("heldout", i, w), random.Random(f"trace-probe:0:{i}"), ("count",))
             for i in range(6)]
    marks = sum(len(q.think.split(". ")) for q in items)
    words = sum(len(p.split(" ")) - 2 for q in items for p in q.think.split(". "))
    assert r["comparison"]["n"] == marks and r["perception"]["n"] == words
    assert set(r) >= {"comparison@2", "comparison@3"}
    with pytest.raises(ValueError, match="marked walks"):
        trace_probe(model, processor, w, ("attribute",), n=2)


class LadderOracle(Sampler):
    """Right on scenes up to ``upto`` objects, wrong above: what a base taught on 1..upto does at best."""

    def __init__(self, items, upto):
        self.truth = {s.render().tobytes(): (q.answer, s.level) for s, q in items}
        self.upto = upto

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            answer, level = self.truth[p.images[0].tobytes()]
            answer = answer if level <= self.upto else "99"
            out.append([f"<think>x</think>\\boxed{{{answer}}}"] * params.n)
        return out


def test_eval_reports_by_level_and_labelled_levels():
    from visplay.eval.world import eval_items

    w = WorldConfig(min_objects=1, max_objects=6)
    items = eval_items("heldout", 60, w, MARKED_FAMILIES, 0)
    res = evaluate_world(LadderOracle(items, 4), w, EvalConfig(n=60, k=2, families=MARKED_FAMILIES),
                         labelled_levels=(1, 2, 3, 4))
    by = res.summary["by_level"]
    assert res.summary["labelled_levels"] == [1, 2, 3, 4]
    assert sorted(by, key=int) == [str(v) for v in sorted({s.level for s, _ in items})]
    assert all(by[lv]["greedy"] == (1.0 if int(lv) <= 4 else 0.0) for lv in by)
    assert sum(v["n"] for v in by.values()) == 60
    assert "level 4*" in res.table() and "level 5 " in res.table()
    assert level_groups({1, 5, 6}, (1, 2)) == {"labelled": {1}, "unlabelled": {5, 6}}


def test_paired_gain_se_and_mcnemar():
    before = [True] * 50 + [False] * 50
    after = [True] * 50 + [True] * 20 + [False] * 30
    pt = paired(before, after)
    assert pt["gain"] == pytest.approx(0.2) and pt["wins"] == 20 and pt["losses"] == 0
    assert pt["p"] < 1e-5 and 0.03 < pt["se"] < 0.05
    assert paired([True, False], [False, True])["p"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        paired([True], [True, False])


def _label_row(level, kept, correct, agreement=0.8):
    return {"image_id": f"world/unlabeled/{level}", "valid": True, "level": level, "kept": kept,
            "label_correct": correct, "label": "1", "agreement": agreement, "question": "q"}


def test_level_mix_counts_valid_kept_and_kept_accuracy():
    rows = [_label_row(6, True, True), _label_row(6, True, False), _label_row(6, False, False),
            _label_row(7, False, None), {**_label_row(8, True, True), "valid": False}]
    mix = level_mix(rows)
    assert mix["6"] == {"valid": 3, "kept": 2, "kept_accuracy": 0.5}
    assert mix["7"] == {"valid": 1, "kept": 0, "kept_accuracy": None}
    assert mix["8"]["valid"] == 0


def test_reasoner_rows_accumulate_across_iterations(tmp_path):
    atomic_write_parquet(tmp_path / "iter1/labels.parquet", [_label_row(6, True, True)])
    atomic_write_parquet(tmp_path / "iter2/labels.parquet", [_label_row(7, True, False), _label_row(7, False, True)])
    assert [r["level"] for r in reasoner_rows(tmp_path, 2, accumulate=False)] == [7, 7]
    assert [r["level"] for r in reasoner_rows(tmp_path, 2, accumulate=True)] == [6, 7, 7]


def test_stop_signal_fires_only_at_the_threshold():
    assert stop_signal({"mean_agreement": 0.94}, 0.95) is None
    assert "0.96 >= evolve.stop_agreement 0.95" in stop_signal({"mean_agreement": 0.96}, 0.95)
    assert stop_signal({"mean_agreement": 1.0}, None) is None
    assert stop_signal({}, 0.5) is None


def test_source_objects_config():
    cfg = load_config("tiny", ["evolve.source_objects=[6, 8]", "evolve.ladder=false", "evolve.replay_images=0"])
    assert (cfg.source_world.min_objects, cfg.source_world.max_objects) == (6, 8)
    assert cfg.world.min_objects == 1  # evaluation still spans every level
    assert cfg.labelled_levels == tuple(range(cfg.pretrain.world.min_objects, cfg.pretrain.world.max_objects + 1))
    assert cfg.source_world_at(3) == cfg.source_world  # no ladder: every iteration draws 6..8
    ladder = load_config("tiny", ["evolve.source_objects=[6, 8]", "evolve.ladder=true", "evolve.survey_images=0"])
    assert [(ladder.source_world_at(t).min_objects, ladder.source_world_at(t).max_objects) for t in (1, 2, 3, 4)] == \
        [(6, 6), (7, 7), (8, 8), (8, 8)]
    for bad, msg in ((["evolve.source_objects=[8, 6]"], "min <= max"), (["evolve.source_objects=[6, 30]"], "grid"),
                     (["evolve.stop_agreement=1.5"], "stop_agreement")):
        with pytest.raises(ConfigError, match=msg):
            load_config("tiny", bad)
    assert set(MARKED_FAMILIES) <= set(FAMILIES)


def test_tracker_writes_one_loop_run_with_the_iteration_as_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from visplay.run.tracker import log_loop_metrics

    stages = {"iter0/eval": {"greedy": 0.8, "greedy_unlabelled": 0.5, "by_level": {"6": {"greedy": 0.7}}},
              "iter1/eval": {"greedy": 0.9, "greedy_unlabelled": 0.6, "by_level": {"6": {"greedy": 0.8}}},
              "iter1/labels": {"label_accuracy_kept": 0.88, "n_kept": 40, "note": "not a number"}}
    log_loop_metrics(tmp_path, ("tensorboard",), 0, stages)
    log_loop_metrics(tmp_path, ("tensorboard",), 1, stages)
    log_loop_metrics(tmp_path, (), 1, {"iter1/eval": {"greedy": 0.1}})  # no tracker chosen: nothing written
    acc = EventAccumulator(str(tmp_path / "tb" / "loop"))
    acc.Reload()
    assert [(e.step, round(e.value, 3)) for e in acc.Scalars("eval/greedy_unlabelled")] == [(0, 0.5), (1, 0.6)]
    assert [(e.step, e.value) for e in acc.Scalars("labels/n_kept")] == [(1, 40)]
    assert [round(e.value, 3) for e in acc.Scalars("eval/greedy_level6")] == [0.7, 0.8]
    assert len(list((tmp_path / "tb").iterdir())) == 1  # one run


def test_pretrain_walk_orders_list_the_same_objects_and_answer() -> None:
    """`pretrain.walk` (models/tiny-rows and -reversed): the same scene, objects and answer, in row
    order and backwards, every row named, and each chain agrees with itself (its key exists)."""
    from visplay.roles.prompts import REASONER_INSTRUCTION
    from visplay.tiny.pretrain import PretrainConfig, example
    from visplay.worlds.trace import listed_objects, trace_key

    walks = {w: PretrainConfig(walk=w) for w in ("reading", "rows", "rows-reversed")}
    checked = 0
    for i in range(200):
        ex = {w: example(i, c) for w, c in walks.items()}
        if not ex["reading"]["target"].startswith("<think>"):
            assert ex["rows"]["target"] == ex["reading"]["target"]  # questioner rows are unchanged
            continue
        question = ex["reading"]["messages"][0]["content"][0]["text"].replace(REASONER_INSTRUCTION, "").strip()
        answer = ex["reading"]["target"].rsplit("boxed{", 1)[1][:-1]
        keys = set()
        for w, e in ex.items():
            assert e["target"].endswith(f"\\boxed{{{answer}}}")
            assert sorted(listed_objects(e["target"])) == sorted(listed_objects(ex["reading"]["target"]))
            keys.add(trace_key(question, e["target"], answer))
        assert len(keys) == 1 and None not in keys
        rows = ex["rows"]["target"][len("<think>"):]
        assert rows.startswith("a: ") and ". e: " in rows
        assert ex["rows-reversed"]["target"].startswith("<think>e: ")
        checked += 1
    assert checked > 150
    with pytest.raises(ValueError, match="pretrain.walk must be one of"):
        PretrainConfig(walk="spiral")
