"""World: determinism, rendering matches the scene, grammar round-trips, oracle is right.

Offline, no model. `pytest tests/test_world.py`.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from visplay.worlds.questions import FAMILIES, grade, make_question, oracle, parse
from visplay.worlds.scene import CELL_PX, COLOURS, HELD_OUT_COMBOS, WorldConfig, make_scene
from visplay.worlds.trace import scene_id


def test_scenes_are_deterministic_and_splits_differ():
    a, b = make_scene("train", 7), make_scene("train", 7)
    assert a == b and np.array_equal(np.asarray(a.render()), np.asarray(b.render()))
    assert make_scene("heldout", 7).objects != a.objects


def test_render_puts_each_object_colour_in_its_cell():
    for i in range(50):
        s = make_scene("train", i, WorldConfig(noise=0))
        arr = np.asarray(s.render()).astype(int)
        assert arr.shape == (s.grid * CELL_PX, s.grid * CELL_PX, 3)
        for o in s.objects:
            cy, cx = o.row * CELL_PX + CELL_PX // 2, o.col * CELL_PX + CELL_PX // 2
            pix = arr[cy + 2, cx]  # inside every shape, triangles included
            assert np.abs(pix - np.array(COLOURS[o.colour])).max() <= 20, (scene_id(s), o)
        occupied = {(o.row, o.col) for o in s.objects}
        for r in range(s.grid):
            for c in range(s.grid):
                if (r, c) not in occupied:  # empty cells are background
                    assert arr[r * CELL_PX + 8, c * CELL_PX + 8].min() >= 220  # inside the cell marks


def test_compositional_holdout():
    train_combos = {(o.colour, o.shape) for i in range(500) for o in make_scene("train", i).objects}
    assert not train_combos & HELD_OUT_COMBOS
    for i in range(50):
        s = make_scene("compositional", i)
        assert any((o.colour, o.shape) in HELD_OUT_COMBOS for o in s.objects)


def _brute(scene, text):
    """Independent answers for some families, from the scene description string."""
    desc = [d.split() for d in scene.describe().split("; ")] if scene.objects else []
    m = re.fullmatch(r"How many objects are (\w+) or (\w+)\?", text)
    if m:
        return str(sum(d[2] in (m.group(1), m.group(2)) for d in desc))
    m = re.fullmatch(r"In which column is the (\w+) (\w+)\?", text)
    if m:
        hits = [d[0] for d in desc if d[2] == m.group(1) and d[3] == m.group(2)]
        return hits[0][1] if len(hits) == 1 else None
    m = re.fullmatch(r"What fraction of the objects are (\w+)\?", text)
    if m:
        return f"{round(sum(d[2] == m.group(1) for d in desc) / len(desc), 2):g}"
    return "skip"


def test_oracle_on_many_random_scenes():
    rng = random.Random(1)
    seen = set()
    for i in range(3000):
        s = make_scene("train", i, WorldConfig(min_objects=0, max_objects=12))
        q = make_question(s, rng)
        seen.add(q.family)
        assert oracle(s, q.text) == q.answer
        brute = _brute(s, q.text)
        if brute != "skip":
            assert brute == q.answer, (s.describe(), q)
        assert grade(q.text, q.answer, q.answer)
    assert seen == set(FAMILIES)


def test_parse_round_trip_and_rejects_off_grammar():
    rng = random.Random(0)
    for i in range(300):
        q = make_question(make_scene("train", i), rng)
        fam, _ = parse(q.text)
        assert fam.name == q.family
    for bad in ["", "How many dragons are there?", "What colour is the object in z9? A. red", "hello"]:
        assert oracle(make_scene("train", 0), bad) is None


def test_oracle_answers_questions_the_generator_never_wrote():
    s = make_scene("train", 3, WorldConfig(min_objects=5, max_objects=5))
    o = s.objects[0]
    q = f"What colour is the object in {o.cell}? A. {o.colour} B. zzz"
    assert oracle(s, q) == "A"
    assert oracle(s, f"What colour is the object in {o.cell}? A. zzz B. yyy") is None  # truth not offered
    n = sum(x.colour == o.colour and x.shape == o.shape for x in s.objects)
    assert oracle(s, f"How many {o.colour} {o.shape}s are there?") == str(n)


def test_grading_types():
    assert grade("What fraction of the objects are red?", "0.45", "0.5")
    assert not grade("What fraction of the objects are red?", "0.7", "0.5")
    assert grade("What fraction of the objects are red?", "1/2", "0.5")
    assert grade("What colour is the left-most circle? A. red B. blue", "(B)", "B")
    assert not grade("What colour is the left-most circle? A. red B. blue", "A", "B")
    assert not grade("How many objects are there?", None, "3")


@pytest.mark.parametrize("kw", [dict(grid=1), dict(min_objects=5, max_objects=2), dict(max_objects=99), dict(noise=-1)])
def test_bad_world_config(kw):
    with pytest.raises(ValueError, match="world"):
        WorldConfig(**kw)


def test_bad_split_and_family():
    with pytest.raises(ValueError, match="unknown world split"):
        make_scene("nope", 0)
    with pytest.raises(ValueError, match="unknown question families"):
        make_question(make_scene("train", 0), random.Random(0), ["dragons"])


def test_position_bars_encode_row_and_column_of_every_cell():
    cfg = WorldConfig(noise=0.0, max_objects=25, min_objects=25)  # full grid: bars drawn over objects
    img = np.asarray(make_scene("train", 3, cfg).render()).astype(int)
    seen = set()
    for r in range(cfg.grid):
        for c in range(cfg.grid):
            y, x = r * CELL_PX, c * CELL_PX
            top, left = img[y + 1, x + CELL_PX // 2], img[y + CELL_PX // 2, x + 1]
            assert top[0] == top[1] == top[2] and left[0] == left[1] == left[2]  # grey, never an object colour
            seen.add((int(top[0]), int(left[0])))
    assert len(seen) == cfg.grid**2  # every cell carries a distinct (row, column) code
    plain = np.asarray(make_scene("train", 3, WorldConfig(noise=0.0, max_objects=25, min_objects=25, cell_marks=False)).render())
    assert not np.array_equal(plain, img)


def test_the_world_task_owns_its_format_in_one_module():
    """`visplay.worlds.trace` writes and reads the image id and the trace; the reasoner's parser and
    the trace key read a completion through its one reader (`split_trace`)."""
    import doctest

    import visplay.worlds.trace as trace
    from visplay.roles.parsing import parse_reasoner

    assert doctest.testmod(trace).failed == 0
    scene = make_scene("unlabeled", 12)
    assert trace.parse_world_id(trace.scene_id(scene)) == ("unlabeled", 12)
    q = make_question(scene, random.Random(0), ("count",))
    written = trace.target(q)
    assert trace.split_trace(written) == ("", q.think, f"\\boxed{{{q.answer}}}")
    assert parse_reasoner(written).format_ok and parse_reasoner(written).answer == q.answer
    assert trace.trace_key(q.text, written, q.answer) is not None
    for bad in ("\\boxed{1}", "x <think>a</think> \\boxed{1}", "<think>a</think> \\boxed{1} <think>"):
        assert not parse_reasoner(bad).format_ok, bad
