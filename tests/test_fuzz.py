"""Fuzzed model outputs never break a run: the whole checked-in corpus (tests/corpus/, 12,080
questioner and reasoner outputs from `scripts/make_fuzz_corpus.py`) through the parsers, both
rewards, majority voting with the grader's hard timeout, and the generation and labeling stages
down to their parquet files; then hypothesis properties of the same functions.

Asserted for every output: no exception, bounded time (per parse, per comparison), a reason for
every rejection, and that the well-formed outputs in the corpus are still accepted (a parser that
rejects everything would pass the rest). The grader is shared by the module, so each hanging
comparison (power towers, factorial towers, nested fractions) is paid for once.
Offline, about a minute on 2 cores: `pytest -q tests/test_fuzz.py`.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visplay.answers import Grader, normalize_answer
from visplay.data.sources import WorldSource
from visplay.evolve.rows import generate_questions, label_questions, skip_reasons, storable
from visplay.io import atomic_write_parquet
from visplay.answers.voting import majority_vote_batch
from visplay.rewards.questioner import INVALID_REWARD, questioner_reward
from visplay.rewards.reasoner import accuracy_reward, format_reward
from visplay.roles.parsing import QTYPES, last_boxed, parse_questioner, parse_reasoner
from visplay.roles.prompts import questioner_target
from visplay.sampling.base import SamplingParams
from visplay.worlds.scene import WorldConfig

CORPUS = Path(__file__).parent / "corpus"
TIMEOUT = 1.0  # the grader's hard limit per comparison in this file
GROUP = 8
HANG_PARTNER = "2x"  # the agreeing answer in groups with a hanging one (scripts/make_fuzz_corpus.py)

QUESTIONER_REASONS = re.compile(
    r"ok|not a string|empty question|empty answer|nested tags|unknown type .+|tags missing or out of order: "
    r"(no <type> at the start|<type> not closed by </type>|no <question> after </type>|"
    r"no </answer> at the end \(cut off, or text after it\)|no </question> followed by <answer>)", re.DOTALL)
REASONER_REASONS = {"ok", "not a string", "no boxed answer", "empty boxed answer",
                    "no <think>...</think> before the answer", "answer not after </think>"}


def load(name: str) -> list[dict]:
    with gzip.open(CORPUS / f"{name}.jsonl.gz", "rt", encoding="ascii") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def questioner_corpus():
    return load("questioner")


@pytest.fixture(scope="module")
def reasoner_corpus():
    return load("reasoner")


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=TIMEOUT, workers=2) as g:
        yield g


class CorpusSampler:
    """A `Sampler` that answers every prompt with the next ``n`` corpus texts (cycling)."""

    def __init__(self, texts: list[str]):
        self.texts = itertools.cycle(texts)

    def generate(self, prompts, params):
        return [[next(self.texts) for _ in range(params.n)] for _ in prompts]


def test_corpus_is_large_and_small(questioner_corpus, reasoner_corpus):
    assert len(questioner_corpus) + len(reasoner_corpus) >= 10_000
    assert sum(p.stat().st_size for p in CORPUS.glob("*.gz")) < 3 * 2**20
    kinds = Counter(r["kind"] for r in questioner_corpus + reasoner_corpus)
    assert min(kinds.values()) >= 20 and len(kinds) >= 30
    assert max(len(r["text"]) for r in reasoner_corpus) >= 500_000  # huge outputs are in
    assert any("\ud800" in r["text"] for r in questioner_corpus + reasoner_corpus)  # lone surrogates survived JSON


# ---------------------------------------------------------------- the whole corpus


def test_parsers_on_the_whole_corpus(questioner_corpus, reasoner_corpus):
    slowest = 0.0
    for r in questioner_corpus:
        start = time.process_time()
        p = parse_questioner(r["text"])
        slowest = max(slowest, time.process_time() - start)
        assert QUESTIONER_REASONS.fullmatch(p.reason), (r["id"], p.reason)
        assert p.valid == (p.reason == "ok")
        if p.valid:
            assert p.qtype in QTYPES and p.question and p.answer
        if r["kind"] in ("valid", "valid_spacing"):
            assert p.valid, (r["id"], p.reason)
    for r in reasoner_corpus:
        start = time.process_time()
        p = parse_reasoner(r["text"])
        slowest = max(slowest, time.process_time() - start)
        assert p.reason in REASONER_REASONS, (r["id"], p.reason)
        assert p.format_ok == (p.reason == "ok") and (p.answer is None) == (p.reason in ("no boxed answer", "empty boxed answer"))
        if r["kind"] in ("valid", "hang"):
            assert p.format_ok and p.answer, (r["id"], p.reason)
    assert slowest < 1.0, f"one parse took {slowest:.2f}s of CPU"


def test_each_hanging_comparison_is_cut_at_the_timeout(reasoner_corpus, grader):
    hangers = sorted({parse_reasoner(r["text"]).answer for r in reasoner_corpus if r["kind"] == "hang"})
    assert len(hangers) >= 10
    for h in hangers:
        start = time.perf_counter()
        verdict = grader.verdict(h, HANG_PARTNER)
        elapsed = time.perf_counter() - start
        assert not verdict.equal and verdict.reason in ("timeout", "grader", "error"), (h, verdict)
        assert elapsed < TIMEOUT + 15, (h, elapsed)  # the limit, plus starting a replacement worker
    assert grader.stats["timeout"] >= 3, grader.stats  # the shapes really do hang sympy


def test_majority_vote_on_the_whole_corpus(reasoner_corpus, grader):
    groups: dict[int, list] = {}
    kinds: dict[int, set] = {}
    for r in reasoner_corpus:
        groups.setdefault(r["group"], []).append(parse_reasoner(r["text"]).answer)
        kinds.setdefault(r["group"], set()).add(r["kind"])
    start = time.perf_counter()
    votes = majority_vote_batch(list(groups.values()), grader)
    elapsed = time.perf_counter() - start
    assert len(votes) == len(groups) == len(reasoner_corpus) // GROUP
    for answers, vote, g in zip(groups.values(), votes, groups):
        kept = [a for a in answers if a is not None and a.strip()]
        assert vote.total == len(kept) and 0 <= vote.count <= vote.total
        assert vote.label is None if not kept else vote.label in kept
        assert sum(vote.dropped.values()) == len(answers) - len(kept)
        if "hang" in kinds[g]:
            assert (vote.label, vote.count, vote.total) == (HANG_PARTNER, GROUP - 1, GROUP)  # the tower lost, nothing broke
    assert elapsed < 120 + (grader.stats["timeout"] + grader.stats["error"]) * (TIMEOUT + 15), elapsed


def test_reasoner_reward_on_the_whole_corpus(reasoner_corpus, grader):
    texts, labels = [r["text"] for r in reasoner_corpus], [r["label"] for r in reasoner_corpus]
    acc, fmt = accuracy_reward(None, texts, label=labels, grader=grader), format_reward(None, texts)
    assert len(acc) == len(fmt) == len(texts)
    assert set(acc) <= {0.0, 1.0} and set(fmt) <= {0.0, 1.0}
    assert fmt == [float(parse_reasoner(t).format_ok) for t in texts]
    right = [a for a, r in zip(acc, reasoner_corpus) if r["kind"] == "valid" and parse_reasoner(r["text"]).answer == r["label"]]
    assert right and all(right)  # a sample that boxes exactly its label is always rewarded


def test_questioner_reward_on_the_whole_corpus(questioner_corpus, reasoner_corpus, grader):
    image = next(iter(WorldSource(WorldConfig(), "unlabeled"))).image
    reasoner = CorpusSampler([r["text"] for r in reasoner_corpus])
    texts = [r["text"] for r in questioner_corpus]
    for i in range(0, len(texts), 16):  # m = GROUP: each valid question is answered by one corpus group
        batch = texts[i : i + 16]
        scores = questioner_reward(batch, [image] * len(batch), reasoner, m=GROUP, grader=grader, max_new_tokens=8)
        assert len(scores.reward) == len(batch) and sum(scores.reasons.values()) == len(batch)
        assert all(reason for reason in scores.reasons)
        for reward, valid, share in zip(scores.reward, scores.valid, scores.diversity_penalty):
            assert (reward == INVALID_REWARD) if not valid else (-1.0 <= reward <= 0.5)
            assert 0.0 < share <= 1.0


def test_stages_store_whatever_the_models_write(questioner_corpus, reasoner_corpus, grader, tmp_path):
    """generate_questions + label_questions over the corpus, written to parquet and read back."""
    world = WorldConfig()
    items = list(itertools.islice(WorldSource(world, "unlabeled"), 10))
    k = len(questioner_corpus) // len(items)
    params = SamplingParams(max_new_tokens=8)
    rows = generate_questions(CorpusSampler([r["text"] for r in questioner_corpus]), items, k, params, world)
    assert len(rows) == k * len(items)
    assert all(r["reason"] for r in rows) and all(r["valid"] == (r["reason"] == "ok") for r in rows)
    assert any(r["true_answer"] is not None for r in rows)  # the oracle answered well-formed questions
    # reasoner samples in corpus groups, so hanging comparisons are the ones already cut (and cached)
    labeled = label_questions(CorpusSampler([r["text"] for r in reasoner_corpus]), rows, GROUP, params, grader, (0.25, 0.75))
    assert [r["sample"] for r in labeled] == [r["sample"] for r in rows]
    assert all(r["skip_reason"] for r in labeled if r["label"] is None)
    assert set(skip_reasons(labeled)) <= {f"invalid question: {r['reason']}" for r in rows} | {"no boxed answer in any sample"}
    assert sum(r["kept"] for r in labeled) > 0
    out = atomic_write_parquet(tmp_path / "labels.parquet", labeled)
    back = pq.read_table(out, columns=["image_id", "sample", "raw", "samples"]).to_pylist()
    assert len(back) == len(labeled) and back[0]["raw"] == storable(rows[0]["raw"])


# ---------------------------------------------------------------- properties


TAGLESS = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(QTYPES), TAGLESS, TAGLESS, st.sampled_from(["", " ", "\n", "\t \n"]))
def test_a_well_formed_question_always_parses_back(qtype, question, answer, pad):
    text = pad + questioner_target(qtype, question, answer) + pad
    p = parse_questioner(text)
    if question.strip() and answer.strip():
        assert p.valid and (p.qtype, p.question, p.answer) == (qtype, question.strip(), answer.strip())
    else:
        assert not p.valid and p.reason in ("empty question", "empty answer")


BALANCED = st.recursive(st.text(st.characters(blacklist_characters="{}\\"), max_size=8),
                        lambda inner: st.lists(inner, max_size=3).map(lambda xs: "{" + "".join(xs) + "}"), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), BALANCED, st.text(st.characters(blacklist_characters="\\"), max_size=60))
def test_the_last_box_wins_whatever_surrounds_it(before, content, after):
    text = before + "\\boxed{" + content + "}" + after
    assert last_boxed(text) == content.strip()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_storable_text_always_reaches_parquet(text):
    s = storable(text)
    s.encode("utf-8")  # never raises
    assert s == text or "\ufffd" in s or "?" in s


SAFE_ANSWERS = st.lists(st.one_of(st.none(), st.sampled_from(["1", "1.0", "1/2", "0.5", "A", "(A)", "red", "Red", ""]),
                                  st.text(st.characters(blacklist_characters="^!*\\"), max_size=6)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(SAFE_ANSWERS, min_size=1, max_size=6))
def test_votes_are_well_formed_for_any_answers(answer_lists):
    with Grader(workers=0) as g:
        votes = majority_vote_batch(answer_lists, g)
    for answers, v in zip(answer_lists, votes):
        kept = [a for a in answers if a is not None and a.strip()]
        assert v.total == len(kept) and (v.label in kept if kept else v.label is None)
        assert v.count >= 1 if kept else v.count == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_normalize_answer_is_total_and_stable(text):
    once = normalize_answer(text)
    assert isinstance(once, str) and once == once.strip()


@pytest.mark.slow
def test_corpus_is_what_its_seed_gives():
    """The checked-in files are exactly `scripts/make_fuzz_corpus.py --seed 0` (regenerate after editing it)."""
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "scripts" / "make_fuzz_corpus.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
