"""The rows of the loop's data stages, as plain functions: images -> questions -> silver labels -> datasets.

Each takes data and returns rows (list of dicts, written as parquet by the loop). Rows carry the
image as PNG bytes, so every stage output is self-contained and a resumed stage needs nothing but
the previous stage's file. Where the images come from the world, the oracle's answer is recorded
next to each question, so pseudo-label accuracy is known (never used for training).
Test: `pytest tests/test_evolve.py`.
"""

from __future__ import annotations

import io
from dataclasses import replace
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import pyarrow.parquet as pq
from PIL import Image

from visplay.answers import Grader, rate, sample_answers
from visplay.answers.committee import chain_key, committee_votes
from visplay.data.sources import ImageItem
from visplay.io import image_bytes
from visplay.run.rundir import RunDir
from visplay.run.stages import stage_name
from visplay.roles.parsing import parse_questioner
from visplay.roles.prompts import questioner_messages, reasoner_messages
from visplay.sampling.base import Prompt, Sampler, SamplingParams
from visplay.evolve.seeds import MEMBER_SEED_STRIDE
from visplay.worlds.questions import grade, oracle
from visplay.worlds.scene import WorldConfig, make_scene
from visplay.worlds.trace import has_trace_key, parse_world_id, trace_key


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def from_png(data) -> Image.Image:
    """The image of a row's ``image_png``: PNG bytes, or the `datasets.Image` struct parquet gives back."""
    return Image.open(io.BytesIO(image_bytes(data))).convert("RGB")


def storable(text: object) -> str:
    """Model output as a string parquet can hold: lone surrogates (possible in JSON from a
    server) become "?", so one odd sample cannot fail the stage's write."""
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    return text.encode("utf-8", "replace").decode("utf-8")


def question_key(row: dict) -> str:
    """Which question a row is about (image, sample): the key chunked parts are checked against."""
    return f"{row['image_id']}#{row['sample']}"


def world_scene(image_id: str, world: WorldConfig | Callable[[int], WorldConfig] | None):
    """The scene behind a world image id, or None for other images. ``world``: the config that drew
    it, or a function of the scene index giving it (a ladder with replay draws from two)."""
    split_index = parse_world_id(image_id)
    if world is None or split_index is None:
        return None
    split, index = split_index
    return make_scene(split, index, world(index) if callable(world) else world)


def generate_questions(
    questioner: Sampler, items: Sequence[ImageItem], k: int, params: SamplingParams,
    world: WorldConfig | Callable[[int], WorldConfig] | None,
) -> list[dict]:
    """k questions per image from the questioner; invalid ones are kept with their reason."""
    prompts = [Prompt(questioner_messages(), (it.image,)) for it in items]
    outs = questioner.generate(prompts, replace(params, n=k))
    rows = []
    for it, texts in zip(items, outs):
        png = png_bytes(it.image)
        scene = world_scene(it.id, world)
        for j, text in enumerate(map(storable, texts)):
            p = parse_questioner(text)
            rows.append({
                "image_id": it.id, "origin": it.origin, "sample": j, "image_png": png, "raw": text,
                "level": None if scene is None else scene.level,  # recorded for measurement, never used to train
                "valid": p.valid, "reason": p.reason, "qtype": p.qtype, "question": p.question,
                "questioner_answer": p.answer,
                "true_answer": oracle(scene, p.question) if p.valid and scene is not None else None,
            })
    return rows


def unlabeled(row: dict) -> dict:
    """A question row with every labeling column present and empty (the labels.parquet schema)."""
    return {**row, "samples": [], "answers": [], "label": None, "count": 0, "answered": 0, "agreement": 0.0,
            "kept": False, "label_correct": None, "questioner_correct": None, "skip_reason": None,
            "member_labels": [], "member_agreement": [], "chains": [], "rule": None}


def vote_rule(mode: str, image_id: str) -> str:
    """The rule that votes on a question about ``image_id`` under ``evolve.agreement`` ``mode``: ``trace``
    where the image's task defines a trace key (`TRACE_KEYS`), else ``answer``; ``chain`` and ``answer``
    for every image.

    >>> vote_rule("trace", "world/unlabeled/3"), vote_rule("trace", "ab12cd"), vote_rule("chain", "ab12cd")
    ('trace', 'answer', 'chain')
    """
    if mode == "trace" and not any(has(image_id) for has, _ in TRACE_KEYS):
        return "answer"
    return mode


#: The tasks that define a canonical key of a chain, as (does this image id have one, key(question,
#: completion, answer)); ``agreement: trace`` votes on it. One entry per task: the world's walk today.
TRACE_KEYS = ((has_trace_key, trace_key),)


def _key_of(rule: str, image_id: str, question: str):
    """The key one question's chains are voted on under ``rule`` (None: the answer vote)."""
    if rule == "chain":
        return chain_key
    if rule == "trace":
        key = next(key for has, key in TRACE_KEYS if has(image_id))
        return lambda completion, answer: key(question, completion, answer)
    return None


def label_questions(
    reasoner: Sampler | Sequence[Sampler], rows: Sequence[dict], m: int, params: SamplingParams, grader: Grader,
    band: tuple[float, float] = (0.25, 0.75), mode: str = "answer",
) -> list[dict]:
    """Silver labels from m samples of the reasoner, or of every committee member (a list of
    samplers, the reasoner first), one output row per input row.

    The vote is `visplay.answers.committee_votes` (``mode`` answer, trace or chain); ``rule`` records
    which rule voted on each question (`vote_rule`: under trace, a question without a trace key is
    voted on answers). ``agreement`` c = the weakest member's share of
    its m samples on the label (one member: majority count / m, `visplay.answers.agreement`);
    ``kept`` = c in the band (inclusive). Each member's own answer and share are recorded beside
    the label, and ``chains`` holds the samples that agree with it. Rows that cannot be labeled keep
    ``label`` None and say why in ``skip_reason`` (invalid question, no boxed answer, disagreement).
    """
    members = list(reasoner) if isinstance(reasoner, (list, tuple)) else [reasoner]
    todo = [r for r in rows if r["valid"]]
    prompts = [Prompt(reasoner_messages(r["question"]), (from_png(r["image_png"]),)) for r in todo]
    per_member = []  # [member]: (samples, answers)
    for i, sampler in enumerate(members):
        p = replace(params, seed=(params.seed + MEMBER_SEED_STRIDE * i) % 2**31)
        per_member.append(sample_answers(sampler, prompts, m, p, clean=storable))
    samples = [[member[0][q] for member in per_member] for q in range(len(todo))]  # [question][member][sample]
    answers = [[member[1][q] for member in per_member] for q in range(len(todo))]
    rules = [vote_rule(mode, r["image_id"]) for r in todo]
    key_fns = [_key_of(rule, r["image_id"], r["question"]) for r, rule in zip(todo, rules)]
    keys = [None if key is None else [[key(s, a) for s, a in zip(ss, aa)] for ss, aa in zip(qs, qa)]
            for key, qs, qa in zip(key_fns, samples, answers)]
    rules = iter(rules)
    votes = iter(zip(samples, answers, committee_votes(answers, keys, mode, grader)))
    out = []
    for r in rows:
        base = unlabeled(r)
        if not r["valid"]:
            out.append({**base, "skip_reason": f"invalid question: {r['reason']}"})
            continue
        ss, ans, v = next(votes)
        base.update(rule=next(rules), samples=[s for member in ss for s in member], answers=[a for member in ans for a in member],
                    count=v.count, answered=v.answered, member_labels=v.member_labels,
                    member_agreement=v.member_agreement)
        if v.label is None:
            out.append({**base, "skip_reason": v.reason})
            continue
        truth = r.get("true_answer")
        out.append({
            **base, "label": v.label, "agreement": v.agreement, "kept": band[0] <= v.agreement <= band[1],
            "chains": [[ss[i][j] for j in idx] for i, idx in enumerate(v.chains)],  # per member
            "label_correct": None if truth is None else grade(r["question"], v.label, truth, grader),
            "questioner_correct": None if truth is None else grade(r["question"], r["questioner_answer"], truth, grader),
        })
    return out


def skip_reasons(rows: Sequence[dict]) -> dict[str, int]:
    return dict(Counter(r["skip_reason"] for r in rows if r.get("skip_reason")))


def questioner_dataset(items: Iterable[ImageItem]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": questioner_messages(), "image": it.image, "image_id": it.id} for it in items])


def level_mix(rows: Sequence[dict]) -> dict[str, dict]:
    """Per scene level (world images only): valid questions, kept ones, and kept-label accuracy --
    where the questioner's questions and the label filter put the iteration on the ladder."""
    out: dict[str, dict] = {}
    for lv in sorted({r["level"] for r in rows if r.get("level") is not None}):
        rs = [r for r in rows if r.get("level") == lv and r["valid"]]
        kept = [r for r in rs if r["kept"] and r.get("label_correct") is not None]
        out[str(lv)] = {"valid": len(rs), "kept": sum(r["kept"] for r in rs),
                        "kept_accuracy": sum(bool(r["label_correct"]) for r in kept) / len(kept) if kept else None}
    return out


def reasoner_rows(run_root, t: int, accumulate: bool) -> list[dict]:
    """The label rows iteration ``t``'s reasoner trains on: this iteration's, or with ``accumulate``
    every iteration's so far (self-labelled data kept across rounds, as in Lee et al. 2025)."""
    run, its = RunDir(run_root), range(1, t + 1) if accumulate else (t,)
    return [r for i in its for r in pq.read_table(run.output(stage_name(i, "labels"))).to_pylist()]


def reasoner_dataset(rows: Sequence[dict], label_column: str = "label"):
    """GRPO rows (prompt, image, label) from kept silver labels (or another label column, for ablations)."""
    from datasets import Dataset

    data = [{"prompt": reasoner_messages(r["question"]), "image": from_png(r["image_png"]), "label": str(r[label_column])}
            for r in rows if r["kept"] and r.get(label_column) not in (None, "")]
    if not data:
        raise ValueError("no questions kept for reasoner training (all outside the agreement band?)")
    return Dataset.from_list(data)


def label_accuracy(rows: Sequence[dict]) -> dict:
    """Pseudo-label accuracy overall and inside the kept band (rows with an oracle answer only)."""
    rows = [r for r in rows if r["label"] is not None]
    known = [r for r in rows if r.get("label_correct") is not None]
    kept = [r for r in known if r["kept"]]
    return {
        "n_labeled": len(rows), "n_kept": sum(r["kept"] for r in rows), "n_with_truth": len(known),
        "label_accuracy": rate(known, "label_correct"), "label_accuracy_kept": rate(kept, "label_correct"),
        "questioner_answer_accuracy": rate(known, "questioner_correct"),
        "mean_agreement": sum(r["agreement"] for r in rows) / len(rows) if rows else None,
        "kept_share": rate(rows, "kept"),
        "by_rule": {rule: {"labeled": sum(r.get("rule") == rule for r in rows),
                           "kept": sum(bool(r["kept"]) and r.get("rule") == rule for r in rows)}
                    for rule in sorted({r.get("rule") for r in rows if r.get("rule")})},
    }

