"""Committee labels: one question, several models' samples, one agreement rule.

A committee is the loop's reasoner plus `evolve.committee`'s members. Each member votes with its own
samples; the committee agrees when every member's modal choice is the same, and its agreement ``c``
is the *weakest* member's share of samples on that choice (so one member alone gives exactly the
plain majority vote and `agreement`, and a committee can only be stricter).

What a member chooses depends on ``mode``:

* ``answer``: its majority answer (equivalence grading through the run's `Grader`, as everywhere);
  the chains that teach the label are the samples whose answer is equivalent to it.
* ``trace``: its modal *trace key*, a task-defined canonical form of the whole reasoning together
  with the answer (the world: the sorted objects a trace lists, plus the answer;
  `visplay.worlds.questions.trace_key`). Two chains that reach the label while listing different
  objects do not agree: a right answer over a wrong listing still teaches the wrong habit
  (docs/experiments.md, session 8). Samples without a key (unparsable) count against the member,
  like unanswered samples do for ``answer``. A question whose task defines no key is voted on answers.
* ``chain``: the same vote on `chain_key`, a key that knows no task: the clauses a chain states,
  order-free, numbers masked, and the answer. Every chain has one, so it serves any image source
  (docs/experiments.md, session 16: as right as the world's trace key on the world, without its verifier).

>>> v = committee_votes([[["3", "3", "4"], ["3", "3", "3"]]], mode="answer")[0]
>>> v.label, round(v.agreement, 2), v.member_labels
('3', 0.67, ['3', '3'])
>>> keys = [[["a1 red|1", "a1 red|1", "b2 red|1"], ["a1 red|1", "b2 red|1", "b2 red|1"]]]
>>> committee_votes([[["1", "1", "1"], ["1", "1", "1"]]], keys, mode="trace")[0].label is None
True

Test: ``pytest -q tests/test_committee.py``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from visplay.answers.equivalence import normalize_answer
from visplay.answers.grading import agreement
from visplay.answers.pool import Grader
from visplay.answers.voting import majority_vote_batch

AGREEMENT_MODES = ("answer", "trace", "chain")
KEYED_MODES = ("trace", "chain")  # voted on a key of the whole chain: the task's (`trace`) or `chain_key`


@dataclass(frozen=True)
class CommitteeVote:
    """The committee's verdict on one question.

    ``label`` None when a member has no answer or the members disagree (``reason`` says which);
    ``chains[i]`` are member i's sample indices that agree with the label (the SFT chains);
    ``member_labels``/``member_agreement`` are each member's own choice and share, for measurement."""

    label: str | None
    agreement: float
    member_labels: list[str | None]
    member_agreement: list[float]
    chains: list[list[int]] = field(default_factory=list)
    reason: str | None = None
    count: int = 0  # samples (all members) on the label
    answered: int = 0  # samples (all members) with an answer


def committee_votes(answers: Sequence[Sequence[Sequence[str | None]]],
                    keys: Sequence[Sequence[Sequence[str | None]] | None] | None = None,
                    mode: str = "answer", grader: Grader | None = None) -> list[CommitteeVote]:
    """One `CommitteeVote` per question. ``answers[q][i]``: member i's parsed answers to question q;
    ``keys[q][i]`` the matching keys of whole chains (``mode`` trace or chain; a question whose
    ``keys[q]`` is None falls back to the answer vote). Every equivalence verdict goes through one batched vote call per
    step (members' majorities, their agreement, the chains), so the grader resolves them together."""
    if mode not in AGREEMENT_MODES:
        raise ValueError(f"agreement mode must be one of {list(AGREEMENT_MODES)}, got {mode!r}")
    traced = {q: keys[q] for q in range(len(answers)) if mode in KEYED_MODES and keys is not None and keys[q] is not None}
    by_answer = [q for q in range(len(answers)) if q not in traced]
    flat = iter(majority_vote_batch([member for q in by_answer for member in answers[q]], grader))
    votes = {q: [next(flat) for _ in answers[q]] for q in by_answer}
    # do the members' majority answers agree? the same equivalence rule, over one answer per member
    across = dict(zip(by_answer, majority_vote_batch([[v.label for v in votes[q]] for q in by_answer], grader)))
    agreed = [q for q in by_answer if all(v.label is not None for v in votes[q]) and across[q].count == len(votes[q])]
    agreed_set = set(agreed)
    # each sample against the label: a two-answer vote of count 2 is the pair verdict of the same rule
    pairs = iter(majority_vote_batch([[votes[q][0].label, a] for q in agreed for m in answers[q] for a in m], grader))
    out = []
    for q in range(len(answers)):
        if q in traced:
            out.append(_trace_vote(answers[q], traced[q]))
            continue
        shares, member_labels = [agreement(v) for v in votes[q]], [v.label for v in votes[q]]
        answered = sum(v.total for v in votes[q])
        if q not in agreed_set:
            why = "no boxed answer in any sample" if None in member_labels else "committee members disagree"
            out.append(CommitteeVote(None, 0.0, member_labels, shares, reason=why, answered=answered))
            continue
        chains = [[j for j, a in enumerate(m) if next(pairs).count == 2 and a is not None] for m in answers[q]]
        out.append(CommitteeVote(member_labels[0], min(shares), member_labels, shares, chains,
                                 count=sum(v.count for v in votes[q]), answered=answered))
    return out


def _trace_vote(member_answers, member_keys) -> CommitteeVote:
    """Trace agreement: every member's modal key (ties: the first seen) must be the same key."""
    modal, shares = [], []
    for keys in member_keys:
        counts = Counter(k for k in keys if k is not None)
        if not counts:
            modal.append(None)
            shares.append(0.0)
            continue
        best = max(counts.items(), key=lambda kv: kv[1])[0]  # Counter keeps first-seen order: ties -> first
        modal.append(best)
        shares.append(counts[best] / len(keys) if keys else 0.0)
    member_labels = [_answer_of(keys, answers, k) for keys, answers, k in zip(member_keys, member_answers, modal)]
    answered = sum(a is not None for answers in member_answers for a in answers)
    if any(k is None for k in modal):
        return CommitteeVote(None, 0.0, member_labels, shares, reason="no parsable trace in any sample",
                             answered=answered)
    if len(set(modal)) != 1:
        return CommitteeVote(None, 0.0, member_labels, shares, reason="committee members disagree",
                             answered=answered)
    chains = [[j for j, k in enumerate(keys) if k == modal[0]] for keys in member_keys]
    return CommitteeVote(member_labels[0], min(shares), member_labels, shares, chains,
                         count=sum(map(len, chains)), answered=answered)


_CLAUSE = re.compile(r"[.;:,\n]|<[^>]*>")  # clause breaks: punctuation, newlines, markup tags
_NUMBER = re.compile(r"(?<!\w)\d+(?:\.\d+)?(?!\w)")


def chain_key(completion: str | None, answer: str | None) -> str | None:
    """A task-free canonical key of a whole chain: the sorted clauses it states (split at punctuation,
    newlines and markup tags; whitespace and case folded; every standalone number written ``#``), then
    the normalised answer. Two chains that state the same things in another order share a key. Numbers
    are masked because a chain's intermediate quantities depend on its order (a running total); the
    answer is the quantity the members must share. It reads no question grammar and no listing: any
    chain of any task has a key. None without a completion or answer.

    >>> chain_key("<think>b2 red 1. a1 blue -. c3 red 2</think>\\\\boxed{2}", "2")
    '\\\\boxed{#} | a1 blue - | b2 red # | c3 red # => 2'
    >>> chain_key("<think>c3 red 1. a1 blue -. b2 red 2</think>\\\\boxed{2}", "2") == _
    True
    >>> chain_key("<think>c3 red 1. a1 blue 2. b2 red -</think>\\\\boxed{2}", "2") == _  # another object counted
    False
    """
    if not isinstance(completion, str) or answer is None:
        return None
    clauses = (" ".join(_NUMBER.sub("#", c).split()).casefold() for c in _CLAUSE.split(completion))
    return " | ".join(sorted(c for c in clauses if c)) + f" => {normalize_answer(answer)}"


def _answer_of(keys, answers, key) -> str | None:
    """The answer as written by the first sample whose trace key is ``key``."""
    return next((a for k, a in zip(keys, answers) if key is not None and k == key), None)


__all__ = ["AGREEMENT_MODES", "KEYED_MODES", "CommitteeVote", "chain_key", "committee_votes"]
