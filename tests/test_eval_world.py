"""World evaluation figures on hand-built rows and items: determinism, prior, bands."""

from __future__ import annotations

from visplay.eval.world import answer_prior, eval_items, summarize
from visplay.worlds.questions import FAMILIES
from visplay.worlds.scene import WorldConfig
from visplay.worlds.trace import scene_id


def _row(fam, g, m, p, prior, c):
    return {"family": fam, "greedy_correct": g, "maj_correct": m, "pass_at_k": p, "prior_correct": prior,
            "agreement": c, "majority": "x", "greedy_format_ok": True}


def test_summarize_rates_and_bands():
    rows = [_row("count", True, True, True, False, 0.9), _row("count", False, True, True, False, 0.5),
            _row("sum", False, False, True, True, 0.3), _row("sum", False, False, False, True, 0.8)]
    s = summarize(rows)
    assert s["overall"] == {"n": 4, "prior": 0.5, "greedy": 0.25, "maj": 0.5, "pass": 0.75}
    assert s["by_family"]["count"]["maj"] == 1.0 and s["by_family"]["sum"]["greedy"] == 0.0
    assert s["label_accuracy_by_band"]["0.25-0.75"] == {"n": 2, "accuracy": 0.5}
    assert s["label_accuracy_by_band"][">=0.7"] == {"n": 2, "accuracy": 0.5}


def test_eval_items_deterministic_and_seeds_disjoint():
    w = WorldConfig()
    a = eval_items("heldout", 20, w, tuple(FAMILIES), 0)
    b = eval_items("heldout", 20, w, tuple(FAMILIES), 0)
    c = eval_items("heldout", 20, w, tuple(FAMILIES), 1)
    assert [q for _, q in a] == [q for _, q in b]
    assert not {scene_id(s) for s, _ in a} & {scene_id(s) for s, _ in c}


def test_answer_prior_is_most_common_training_answer():
    import random
    from collections import Counter

    from visplay.worlds.questions import make_question
    from visplay.worlds.scene import make_scene

    prior = answer_prior(WorldConfig(), ("count", "compare"), n=500)
    assert set(prior) == {"count", "compare"}
    # recount independently: the most common true answer per family over the same training questions
    counts: dict[str, Counter] = {"count": Counter(), "compare": Counter()}
    for i in range(500):
        q = make_question(make_scene("train", i, WorldConfig()), random.Random(f"prior:0:{i}"), ("count", "compare"))
        counts[q.family][q.answer] += 1
    for fam, c in counts.items():
        top = c.most_common(1)[0][1]
        assert c[prior[fam]] == top  # the prior is a most common answer (ties: any of them)


def test_answer_prior_does_not_depend_on_the_traces(monkeypatch):
    """A trace format that draws more random numbers must not move the baseline."""
    import visplay.worlds.questions as questions

    before = answer_prior(WorldConfig(), tuple(questions.FAMILIES), n=600)
    think = questions.Count.think

    def think_with_extra_draws(self, scene, p, rng):
        if rng is not None:
            rng.random(), rng.random()  # extra draws, as a richer trace would take
        return think(self, scene, p, rng)

    monkeypatch.setattr(questions.Count, "think", think_with_extra_draws)
    assert answer_prior(WorldConfig(), tuple(questions.FAMILIES), n=600) == before
