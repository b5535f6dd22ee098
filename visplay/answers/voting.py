"""The vote: sample m answers per prompt, extract each, majority-vote them, measure agreement -- one
recipe (`vote`), used by the questioner reward, the world evaluation and self-training; the labels
stage's committee (`visplay.answers.committee`) shares its first half, `sample_answers`.

`vote(sampler, prompts, m, params, grader)` gives one `Ballot` per prompt: the samples, their
extracted answers (`visplay.answers.extract`: the last ``\\boxed{}``), the `Vote` and its
``agreement`` (`visplay.answers.agreement`). The grouping below is pure Python, no torch.
Semantics (those of ``tests/reference.py`` ``reference_majority_vote``):

* Answers that are None or empty after ``strip()`` are dropped; ``total`` counts the kept ones.
  Other non-strings are converted with ``str()``.
* Greedy grouping in order of first appearance: each new answer is compared with the
  representative (first member) of each existing group, in order, and joins the first group it is
  equivalent to (``visplay.answers``: normalised strings equal or ``grade_answer`` either way);
  otherwise it opens a new group.
* The label is the representative of the largest group (ties: the earliest group), returned as it
  was given; no answers -> label None, count 0, total 0.

Speed without changing the result: the verdict depends only on the normalised strings, so every
answer with the same normalised string lands in the same group — each distinct normalised string
is placed once, with its multiplicity. Verdicts come from one ``Grader`` (fast path, cache shared
across the whole batch, worker processes with a hard timeout). ``majority_vote_batch`` advances all
questions together and sends the comparisons they wait on to the workers in one round at a time.

Test: ``pytest -q tests/test_labeling.py tests/test_answers.py``; speed: ``python benchmarks/bench_majority_vote.py``.

>>> majority_vote(["1/2", " 0.5", "\\\\frac{1}{2}", "3", "3.0", None, " "])
('1/2', 3, 5)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from visplay.answers.equivalence import normalize_answer
from visplay.answers.grading import agreement, extract
from visplay.answers.pool import Grader
from visplay.sampling.base import Prompt, Sampler, SamplingParams


@dataclass(frozen=True)
class Vote:
    """The majority answer of one question's samples.

    dropped counts removed answers by reason
    ("none", "empty"); timeouts counts comparisons that hit the grader's hard timeout (they count
    as "not equivalent").
    """

    label: str | None
    count: int
    total: int
    dropped: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0

    def as_tuple(self) -> tuple[str | None, int, int]:
        return self.label, self.count, self.total


@dataclass
class _Group:
    key: str  # normalised representative
    label: str  # the representative as it was given
    count: int


class _Question:
    """One question's greedy grouping, resumable while it waits for a verdict."""

    def __init__(self, answers: Sequence[str | None]) -> None:
        self.dropped: Counter[str] = Counter()
        self.distinct: list[tuple[str, str, int]] = []  # (normalised, first raw, multiplicity)
        self.total = 0
        self._collect(answers)
        self.groups: list[_Group] = []
        self.position = 0  # next distinct answer to place
        self.candidate = 0  # next group to compare it with
        self.timeouts = 0

    def _collect(self, answers: Sequence[str | None]) -> None:
        order: dict[str, int] = {}
        first: list[str] = []
        counts: list[int] = []
        for answer in answers:
            if answer is None:
                self.dropped["none"] += 1
                continue
            text = answer if isinstance(answer, str) else str(answer)
            if not text.strip():
                self.dropped["empty"] += 1
                continue
            key = normalize_answer(text)
            index = order.setdefault(key, len(first))
            if index == len(first):
                first.append(text)
                counts.append(0)
            counts[index] += 1
            self.total += 1
        self.distinct = [(key, first[i], counts[i]) for key, i in order.items()]

    def advance(self, grader: Grader) -> tuple[str, str] | None:
        """Place answers until done (None) or until a verdict is missing (the pair to compute)."""
        while self.position < len(self.distinct):
            key, raw, count = self.distinct[self.position]
            while self.candidate < len(self.groups):
                group = self.groups[self.candidate]
                verdict = grader.lookup(key, group.key)
                if verdict is None:
                    return key, group.key
                self.timeouts += verdict.reason == "timeout"
                if verdict.equal:
                    group.count += count
                    break
                self.candidate += 1
            else:
                self.groups.append(_Group(key, raw, count))
            self.position += 1
            self.candidate = 0
        return None

    def vote(self) -> Vote:
        if not self.groups:
            return Vote(None, 0, 0, dict(self.dropped), self.timeouts)
        best = max(self.groups, key=lambda g: g.count)  # max keeps the earliest of equal groups
        return Vote(best.label, best.count, self.total, dict(self.dropped), self.timeouts)


def majority_vote_batch(answer_lists: Sequence[Sequence[str | None]], grader: Grader | None = None) -> list[Vote]:
    """One ``Vote`` per question. Without a grader, comparisons run in-process (no timeout)."""
    if grader is None:
        with Grader(workers=0) as inline:
            return majority_vote_batch(answer_lists, inline)
    questions = [_Question(answers) for answers in answer_lists]
    waiting = questions
    while waiting:
        needed: dict[tuple[str, str], None] = {}
        still_waiting = []
        for question in waiting:
            pair = question.advance(grader)
            if pair is not None:
                needed[pair] = None
                still_waiting.append(question)
        if needed:
            grader.resolve(needed)
        waiting = still_waiting
    return [q.vote() for q in questions]


def majority_vote(answers: Sequence[str | None], grader: Grader | None = None) -> tuple[str | None, int, int]:
    """(label, count, total) for one question's answers; see the module docstring."""
    return majority_vote_batch([answers], grader)[0].as_tuple()


@dataclass(frozen=True)
class Ballot:
    """One prompt's vote: its m samples, the answer extracted from each (None: no box), the `Vote`."""

    samples: list[str]
    answers: list[str | None]
    vote: Vote

    @property
    def label(self) -> str | None:
        return self.vote.label

    @property
    def agreement(self) -> float:
        """The label's share of all m samples (`visplay.answers.agreement`)."""
        return agreement(self.vote)


def vote(sampler: Sampler, prompts: Sequence[Prompt], m: int, params: SamplingParams, grader: Grader | None = None,
         clean: Callable[[str], str] | None = None) -> list[Ballot]:
    """Sample ``m`` answers per prompt (one batched call; none when there are no prompts), extract
    each answer, majority-vote them: one `Ballot` per prompt. ``clean`` maps each sample before
    extraction (the labels stage makes samples storable); without a grader, comparisons run in process."""
    if not prompts:
        return []
    samples, answers = sample_answers(sampler, prompts, m, params, clean)
    return [Ballot(ss, ans, v) for ss, ans, v in zip(samples, answers, majority_vote_batch(answers, grader))]


def sample_answers(sampler: Sampler, prompts: Sequence[Prompt], m: int, params: SamplingParams,
                   clean: Callable[[str], str] | None = None) -> tuple[list[list[str]], list[list[str | None]]]:
    """The first half of the recipe, for a vote that is not one model's majority (a committee,
    `visplay.answers.committee`): ``m`` samples per prompt in one batched call (none without
    prompts), each mapped by ``clean``, and the answer extracted from each."""
    if not prompts:
        return [], []
    outs = sampler.generate(prompts, replace(params, n=m))
    samples = [[clean(s) for s in row] if clean else list(row) for row in outs]
    return samples, [[extract(s).answer for s in row] for row in samples]


def rate(rows: Sequence[dict], key: str, empty: float | None = None) -> float | None:
    """Share of ``rows`` whose ``key`` is true (accuracy, kept share, ...), over the rows where it is
    known (not None); ``empty`` when there are none.

    >>> rate([{"ok": True}, {"ok": False}, {"ok": None}], "ok"), rate([], "ok"), rate([], "ok", 0.0)
    (0.5, None, 0.0)
    """
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(map(bool, values)) / len(values) if values else empty


__all__ = ["Ballot", "Vote", "majority_vote", "majority_vote_batch", "rate", "sample_answers", "vote"]
