"""World evaluation: greedy accuracy, maj@k, pass@k and the answer-prior baseline, by family.

Self-evolution can only turn into greedy accuracy what the majority vote already knows, so this
reports maj@k - greedy (the headroom), the agreement distribution, and majority-label accuracy per
agreement band next to plain accuracy, by family and by level (objects in the scene: the
difficulty ladder; the base model saw labels only on ``labelled_levels``). Questions come from
held-out seeds only.
Run: `visplay eval --model tiny --n 500`; test: `pytest tests/test_eval_world.py`.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from visplay.answers import Ballot, Grader, grade, majority_vote_batch, rate, vote
from visplay.roles.parsing import parse_reasoner
from visplay.roles.prompts import reasoner_messages
from visplay.sampling.base import Prompt, Sampler, SamplingParams
from visplay.worlds.questions import (FAMILIES, MARKED_FAMILIES, Question, check_families,
                                      make_question)
from visplay.worlds.scene import SPLITS, Scene, WorldConfig, make_scene
from visplay.worlds.trace import listing_complete, scene_id
from visplay.settings import ConfigError, Sampling
from visplay.io import atomic_write_json, atomic_write_parquet, atomic_write_text
from visplay.roles.parsing import parse_questioner
from visplay.roles.prompts import questioner_messages
from visplay.worlds.questions import grade as grade_question
from visplay.worlds.questions import oracle


@dataclass
class EvalConfig(Sampling):
    """World evaluation (`visplay eval` and the loop's eval stage): greedy, maj@k and pass@k on
    scenes of ``split`` never used in training."""

    SECTION = "eval"
    split: str = "heldout"
    n: int = 500
    k: int = 10
    families: tuple[str, ...] = tuple(FAMILIES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in SPLITS or self.split == "train":
            raise ConfigError(f"eval.split must be one of {[s for s in SPLITS if s != 'train']}, got {self.split!r}")
        if self.n < 1 or self.k < 1:
            raise ConfigError(f"eval.n and eval.k must be >= 1, got n={self.n}, k={self.k}")
        check_families(self.families)


#: Scene indices per evaluation seed: seed s draws scenes s * SCENES_PER_SEED + i (disjoint across seeds).
SCENES_PER_SEED = 10**6
BANDS = {"0.25-0.75": (0.25, 0.75), ">=0.5": (0.5, 1.0), ">=0.7": (0.7, 1.0)}


def eval_items(split: str, n: int, world: WorldConfig, families, seed: int) -> list[tuple[Scene, Question]]:
    """``n`` (scene, question) pairs from ``split``; the same arguments give the same items.

    Different seeds draw disjoint scenes (indices ``seed·10⁶ + i``)."""
    items = []
    for i in range(n):
        scene = make_scene(split, seed * SCENES_PER_SEED + i, world)
        items.append((scene, make_question(scene, random.Random(f"eval:{seed}:{split}:{i}"), families)))
    return items


def answer_prior(world: WorldConfig, families, n: int = 3000, seed: int = 0) -> dict[str, str]:
    """Each family's most common true answer on *training* scenes: the no-image baseline.

    One rng per question, so the baseline depends on the questions only, not on how many draws the
    traces take (with one shared stream, a trace change could flip a near-tied family's prior)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for i in range(n):
        q = make_question(make_scene("train", i, world), random.Random(f"prior:{seed}:{i}"), families)
        counts[q.family][q.answer] += 1
    return {fam: c.most_common(1)[0][0] for fam, c in counts.items()}


def se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` over ``n`` items."""
    return (p * (1 - p) / n) ** 0.5 if n else 0.0


@dataclass
class WorldEval:
    rows: list[dict]
    summary: dict

    def table(self) -> str:
        head = f"{'':<12} {'n':>5} {'prior':>7} {'greedy':>7} {'± se':>6} {'maj@k':>7} {'pass@k':>7} {'maj-gr':>7}"
        lines = [head, "-" * len(head)]
        labelled = set(self.summary.get("labelled_levels", []))
        levels = [(f"level {lv}{'*' if int(lv) in labelled else ''}", s)
                  for lv, s in sorted(self.summary.get("by_level", {}).items(), key=lambda kv: int(kv[0]))]
        fams = sorted(self.summary["by_family"].items())
        for name, s in fams + levels + [("ALL", self.summary["overall"])]:
            band, listed = s.get("label_accuracy_c>=0.7"), s.get("listing_complete")
            lines.append(
                f"{name:<12} {s['n']:>5} {s['prior']:>7.1%} {s['greedy']:>7.1%} {100 * se(s['greedy'], s['n']):>5.1f}p "
                f"{s['maj']:>7.1%} {s['pass']:>7.1%} {100 * (s['maj'] - s['greedy']):>+6.1f}p"
                + (f"  labels at c>=0.7: {band['accuracy']:.0%} of {band['n']}" if band else "")
                + (f"  complete listings: {listed:.0%}" if listed is not None else "")
            )
        if labelled:
            lines.append("* labelled level (seen with labels in pretraining); the others are the ladder above it")
        bands = self.summary["label_accuracy_by_band"]
        lines.append("majority-label accuracy by agreement: " + ", ".join(
            f"c {b}: {v['accuracy']:.1%} (n={v['n']})" for b, v in bands.items()))
        return "\n".join(lines)


def _band(rows: list[dict], lo: float, hi: float) -> dict:
    """Majority-label accuracy of the rows whose agreement is in [lo, hi]: what a filter would keep."""
    rs = [r for r in rows if r["majority"] is not None and lo <= r["agreement"] <= hi]
    return {"n": len(rs), "accuracy": rate(rs, "maj_correct", 0.0)}


def summarize(rows: list[dict], labelled_levels=()) -> dict:
    def stats(rs):
        return {"n": len(rs), "prior": rate(rs, "prior_correct", 0.0), "greedy": rate(rs, "greedy_correct", 0.0),
                "maj": rate(rs, "maj_correct", 0.0), "pass": rate(rs, "pass_at_k", 0.0)}

    fams = sorted({r["family"] for r in rows})
    bands = {name: _band(rows, lo, hi) for name, (lo, hi) in BANDS.items()}
    hist = Counter(round(r["agreement"], 1) for r in rows)
    levels = sorted({r["level"] for r in rows if r.get("level") is not None})
    return {
        "overall": stats(rows),
        "by_family": {f: stats([r for r in rows if r["family"] == f]) for f in fams},
        "by_level": {str(lv): {**stats(rs), "label_accuracy_c>=0.7": _band(rs, 0.7, 1.0),
                               "listing_complete": rate(rs, "listing_complete")}
                     for lv in levels for rs in [[r for r in rows if r.get("level") == lv]]},
        "labelled_levels": sorted(labelled_levels),
        "label_accuracy_by_band": bands,
        "agreement_histogram": {str(k): v for k, v in sorted(hist.items())},
        "greedy_format_ok": rate(rows, "greedy_format_ok", 0.0),
    }


def evaluate_world(sampler: Sampler, world: WorldConfig, settings: EvalConfig, grader: Grader | None = None,
                   labelled_levels=(), greedy_only: bool = False) -> WorldEval:
    """Greedy, maj@k and pass@k on ``settings.n`` held-out questions (``greedy_only``: no samples;
    maj/pass then read 0). Pass the run's ``grader`` so the majority vote over model answers runs
    with its hard per-comparison timeout, and the base model's ``labelled_levels`` so the summary
    can tell the ladder from what it was taught."""
    split, seed, families = settings.split, settings.seed, tuple(settings.families)
    items = eval_items(split, settings.n, world, families, seed)
    prior = answer_prior(world, families, seed=seed)
    prompts = [Prompt(reasoner_messages(q.text), (scene.render(),)) for scene, q in items]
    greedy = sampler.generate(prompts, settings.params(1, temperature=0, top_k=0, top_p=1.0))
    ballots = ([Ballot([], [], v) for v in majority_vote_batch([[] for _ in prompts], grader)] if greedy_only
               else vote(sampler, prompts, settings.k, settings.params(settings.k), grader))
    rows = []
    for (scene, q), g, b in zip(items, greedy, ballots):
        gp = parse_reasoner(g[0])
        ss, answers = b.samples, b.answers
        right = lambda a: grade(a, q.answer, q.qtype, grader=grader).correct  # noqa: E731
        rows.append({
            "id": scene_id(scene), "split": split, "index": scene.index, "level": scene.level, "family": q.family,
            "qtype": q.qtype,
            "question": q.text, "truth": q.answer,
            "greedy_output": g[0], "greedy_answer": gp.answer, "greedy_format_ok": gp.format_ok,
            # the length probe: does the greedy walk list exactly the scene's objects? (walk families only)
            "listing_complete": listing_complete(scene, g[0]) if q.family in MARKED_FAMILIES else None,
            "greedy_correct": right(gp.answer),
            "samples": ss, "sample_answers": answers,
            "majority": b.label, "agreement": b.agreement,  # share of all k samples, invalid ones included
            "maj_correct": right(b.label),
            "pass_at_k": any(right(a) for a in answers),
            "prior_answer": prior.get(q.family), "prior_correct": right(prior.get(q.family)),
        })
    return WorldEval(rows, summarize(rows, labelled_levels))


def write_eval(result: WorldEval, out_dir: str | Path, meta: dict) -> Path:
    out = Path(out_dir)
    atomic_write_parquet(out / "items.parquet", result.rows)
    atomic_write_json(out / "summary.json", {**result.summary, "meta": meta})
    atomic_write_text(out / "summary.md", "```\n" + result.table() + "\n```\n")
    return out


def questioner_validity(sampler: Sampler, world: WorldConfig, split: str = "heldout", n: int = 200,
                        temperature: float = 1.0, top_k: int = 0, max_new_tokens: int = 64, seed: int = 0) -> dict:
    """Share of questioner outputs (sampled at ``temperature``) that parse, and that the world's
    oracle can answer (grammatical and answerable for that scene)."""
    scenes = [make_scene(split, seed * SCENES_PER_SEED + i, world) for i in range(n)]
    outs = sampler.generate([Prompt(questioner_messages(), (s.render(),)) for s in scenes],
                            SamplingParams(temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed))
    parsed = [parse_questioner(o[0]) for o in outs]
    answerable = [p.valid and oracle(s, p.question) is not None for p, s in zip(parsed, scenes)]
    correct = [a and grade_question(p.question, p.answer, oracle(s, p.question)) for a, p, s in zip(answerable, parsed, scenes)]
    return {"n": n, "valid": sum(p.valid for p in parsed) / n, "answerable": sum(answerable) / n,
            "own_answer_correct": sum(correct) / n, "reasons": dict(Counter(p.reason for p in parsed)),
            "distinct_questions": len({p.question for p in parsed if p.valid})}


def paired(before: list[bool], after: list[bool]) -> dict:
    """Paired comparison of two models on the same items: the gain, its standard error (over item
    differences) and an exact McNemar test (two-sided binomial on the discordant items)."""
    from scipy.stats import binomtest

    if len(before) != len(after):
        raise ValueError(f"paired comparison needs the same items: {len(before)} vs {len(after)}")
    n = len(before)
    d = [int(a) - int(b) for b, a in zip(before, after)]
    gain = sum(d) / n if n else 0.0
    var = sum((x - gain) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"n": n, "gain": gain, "se": (var / n) ** 0.5 if n else 0.0, "wins": wins, "losses": losses, "p": p}


def seeds_gain(pairs: list[tuple[list[bool], list[bool]]], reps: int = 2000, rng_seed: int = 0) -> dict:
    """The gain of ``after`` over ``before`` averaged over run seeds that share their eval items
    (``pairs``: one (before, after) per seed, item i the same item in every pair), with an
    item-level standard error: a bootstrap over items, each item's differences averaged over the
    seeds first, so an item counts once however many seeds score it. ``per_seed``: each seed's gain.

    >>> g = seeds_gain([([False, True, True, False], [True, True, True, False])] * 3)
    >>> g["gain"], g["per_seed"], g["n"]
    (0.25, [0.25, 0.25, 0.25], 4)
    """
    import numpy as np

    if not pairs or any(len(b) != len(pairs[0][0]) or len(a) != len(b) for b, a in pairs):
        raise ValueError("seeds_gain needs one (before, after) pair per seed, all on the same items")
    d = np.array([[int(x) - int(y) for y, x in zip(b, a)] for b, a in pairs], dtype=float)  # [seed][item]
    item = d.mean(axis=0)
    n = item.size
    boots = item[np.random.default_rng(rng_seed).integers(0, n, size=(reps, n))].mean(axis=1) if n else np.zeros(1)
    return {"n": n, "gain": float(item.mean()) if n else 0.0, "se": float(boots.std(ddof=1)) if n > 1 else 0.0,
            "ci95": (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))),
            "per_seed": [float(x) for x in d.mean(axis=1)] if n else [0.0] * len(pairs)}


def level_groups(levels, labelled_levels) -> dict[str, set]:
    """The two halves of the ladder: levels seen with labels, and the unlabelled ones above them."""
    labelled = set(labelled_levels)
    return {"labelled": {lv for lv in levels if lv in labelled}, "unlabelled": {lv for lv in levels if lv not in labelled}}
