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

>>> v = committee_votes([[["3", "3", "4"], ["3", "3", "3"]]], mode="answer")[0]
>>> v.label, round(v.agreement, 2), v.member_labels
('3', 0.67, ['3', '3'])
>>> keys = [[["a1 red|1", "a1 red|1", "b2 red|1"], ["a1 red|1", "b2 red|1", "b2 red|1"]]]
>>> committee_votes([[["1", "1", "1"], ["1", "1", "1"]]], keys, mode="trace")[0].label is None
True

Test: ``pytest -q tests/test_committee.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from visplay.answers.grading import agreement
from visplay.answers.pool import Grader
from visplay.answers.voting import majority_vote_batch

AGREEMENT_MODES = ("answer", "trace")


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


def _answer_choices(answers: Sequence[Sequence[Sequence[str | None]]], grader: Grader | None):
    """Per question, per member: (majority answer, share, answered count, count) by equivalence."""
    flat = [member for question in answers for member in question]
    votes = iter(majority_vote_batch(flat, grader))
    return [[next(votes) for _ in question] for question in answers]


def committee_votes(answers: Sequence[Sequence[Sequence[str | None]]],
                    keys: Sequence[Sequence[Sequence[str | None]] | None] | None = None,
                    mode: str = "answer", grader: Grader | None = None) -> list[CommitteeVote]:
    """One `CommitteeVote` per question. ``answers[q][i]``: member i's parsed answers to question q;
    ``keys[q][i]`` the matching trace keys (``mode`` trace; a question whose ``keys[q]`` is None
    falls back to the answer vote)."""
    if mode not in AGREEMENT_MODES:
        raise ValueError(f"agreement mode must be one of {list(AGREEMENT_MODES)}, got {mode!r}")
    member_votes = _answer_choices(answers, grader)
    # do the members' majority answers agree? the same equivalence rule, over one answer per member
    labels = [[v.label for v in votes] for votes in member_votes]
    across = majority_vote_batch(labels, grader)
    out = []
    for q, (votes, joint) in enumerate(zip(member_votes, across)):
        qkeys = keys[q] if keys is not None and mode == "trace" else None
        if qkeys is not None:
            out.append(_trace_vote(answers[q], qkeys))
            continue
        shares = [agreement(v) for v in votes]
        member_labels = [v.label for v in votes]
        if any(label is None for label in member_labels):
            out.append(CommitteeVote(None, 0.0, member_labels, shares, reason="no boxed answer in any sample",
                                     answered=sum(v.total for v in votes)))
            continue
        if joint.count != len(votes):
            out.append(CommitteeVote(None, 0.0, member_labels, shares, reason="committee members disagree",
                                     answered=sum(v.total for v in votes)))
            continue
        label = member_labels[0]
        chains = _equivalent_indices(answers[q], label, grader)
        out.append(CommitteeVote(label, min(shares), member_labels, shares, chains,
                                 count=sum(v.count for v in votes), answered=sum(v.total for v in votes)))
    return out


def _equivalent_indices(member_answers, label: str, grader: Grader | None) -> list[list[int]]:
    """Each member's sample indices whose answer is equivalent to ``label`` (one vote per answer)."""
    out = []
    for answers in member_answers:
        # a two-answer vote is a pair verdict through the same rule: count 2 = equivalent
        pairs = [[label, a] for a in answers]
        verdicts = majority_vote_batch(pairs, grader) if pairs else []
        out.append([j for j, (a, v) in enumerate(zip(answers, verdicts)) if a is not None and v.count == 2])
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


def _answer_of(keys, answers, key) -> str | None:
    """The answer as written by the first sample whose trace key is ``key``."""
    return next((a for k, a in zip(keys, answers) if key is not None and k == key), None)


__all__ = ["AGREEMENT_MODES", "CommitteeVote", "committee_votes"]
