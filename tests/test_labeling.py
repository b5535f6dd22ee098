"""Majority vote against the pairwise reference, hand-built votes, batching, timeouts and the band filter.

In-memory, no network; one test starts grader worker processes (fork, injected comparison).
Run: ``pytest -q tests/test_labeling.py`` (~15 s on 2 cores).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visplay.answers import Grader
from visplay.answers import agreement
from visplay.answers.voting import Vote, majority_vote, majority_vote_batch
from reference import reference_majority_vote

# A small pool with many equivalent spellings, so that groups, ties and merges happen.
POOL = [
    "1", "1.0", " 1 ", "2", "2.00", "0.5", ".5", "1/2", "\\frac{1}{2}", "$\\dfrac{1}{2}$", "2/4", "0.50",
    "A", "(A)", "a", "B", "B.", "yes", "Yes", "no", "no idea", "no way", "red", "Red.", "x", "2x", "x+x",
    "\\sqrt{4}", "", "   ", None,
]
ANSWERS = st.lists(st.sampled_from(POOL), min_size=0, max_size=9)


@settings(max_examples=80, deadline=None)
@given(ANSWERS)
def test_majority_vote_matches_reference(answers: list[str | None]) -> None:
    assert majority_vote(answers) == reference_majority_vote(answers)


@settings(max_examples=15, deadline=None)
@given(st.lists(ANSWERS, min_size=1, max_size=12))
def test_batch_equals_one_by_one(answer_lists: list[list[str | None]]) -> None:
    with Grader(workers=0) as grader:
        votes = majority_vote_batch(answer_lists, grader)
    assert [v.as_tuple() for v in votes] == [reference_majority_vote(a) for a in answer_lists]


def test_equivalent_spellings_form_one_group_and_label_is_first_seen() -> None:
    label, count, total = majority_vote(["3", "0.5", "\\frac{1}{2}", "1/2", "3", "$0.5$"])
    assert (label, count, total) == ("0.5", 4, 6)


def test_ties_go_to_the_earliest_group() -> None:
    assert majority_vote(["B", "A", "A", "(B)"]) == ("B", 2, 4)
    assert majority_vote(["7", "8"]) == ("7", 1, 2)


def test_none_and_empty_are_dropped_and_counted() -> None:
    (vote,) = majority_vote_batch([[None, "", "  ", "4", None, "4.0", "5"]])
    assert vote == Vote("4", 2, 3, {"none": 2, "empty": 2}, 0)
    assert agreement(vote) == 2 / 7  # over all samples, unanswered ones included
    assert majority_vote([None, "", " \n"]) == (None, 0, 0)
    assert majority_vote([]) == (None, 0, 0)
    (nothing,) = majority_vote_batch([[]])
    assert agreement(nothing) == 0.0 and nothing.label is None


def test_no_prefix_is_not_a_wildcard() -> None:
    """The reference server merged any two answers containing "no "; that bug is not reproduced."""
    assert majority_vote(["no idea", "no way", "no clue"]) == ("no idea", 1, 3)


def test_non_string_answers_are_converted() -> None:
    assert majority_vote([3, "3", 3.0, "4"]) == ("3", 3, 4)  # type: ignore[list-item]


def test_comparisons_are_against_the_representative_only() -> None:
    """Greedy grouping: b~a and b~c, but c is compared with the representative a, not with b."""
    with Grader(workers=0, compare=_chain) as grader:
        (vote,) = majority_vote_batch([["a1", "b1", "c1", "c1"]], grader)
    assert vote.as_tuple() == ("a1", 2, 4)  # groups [a1, b1] and [c1, c1]; tie -> earliest


def _chain(x: str, y: str) -> bool:
    return {x, y} in ({"a1", "b1"}, {"b1", "c1"})


def test_timeouts_in_workers_are_counted_per_question() -> None:
    lists = [["hang", "HANG", "x"], ["y", "Y", "z"]]
    with Grader(timeout=1.0, workers=1, compare=_hang_on_marker, start_method="fork", worker_init=None) as grader:
        votes = majority_vote_batch(lists, grader)
        stats = dict(grader.stats)
    # "hang" vs "HANG" normalise to "hang" (words are lowercased) -> one group without any comparison;
    # "x" vs "hang" hangs -> timeout -> not equivalent.
    assert votes[0] == Vote("hang", 2, 3, {}, 1)
    assert votes[1].as_tuple() == ("y", 2, 3) and votes[1].timeouts == 0
    assert stats["timeout"] == 1 and stats["letter"] >= 2


def _hang_on_marker(a: str, b: str) -> bool:
    if "hang" in (a, b):
        while True:
            pass
    return a == b


class _Votes:
    """A reasoner whose m samples for every question are ``answers``."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, params):
        assert params.n == len(self.answers)
        return [[f"<think>x</think>\\boxed{{{a}}}" if a else "no box" for a in self.answers] for _ in prompts]


@pytest.mark.parametrize(
    ("answers", "kept"),
    [(["1", "2", "3", "4"], False),  # c = 0.25 < band_low 0.3
     (["1", "1", "2", "3"], True),  # c = 0.5
     (["1", "1", "1", "2"], True),  # c = 0.75 = band_high: inclusive
     (["1", "1", "1", "1"], False),  # c = 1.0 > band_high
     (["1", "1", "1", None], True)],  # unanswered samples count in m: c = 0.75
)
def test_the_labels_stage_keeps_agreement_inside_the_band_inclusive(answers, kept) -> None:
    """The band the pipeline applies (`label_questions`, as the labels stage calls it), at its edges."""
    from PIL import Image

    from visplay.evolve.rows import label_questions, png_bytes
    from visplay.sampling.base import SamplingParams

    row = {"image_id": "x", "sample": 0, "valid": True, "reason": "ok", "question": "How many red objects are there?",
           "image_png": png_bytes(Image.new("RGB", (8, 8))), "questioner_answer": "1", "true_answer": None}
    with Grader(workers=0) as g:
        (out,) = label_questions(_Votes(answers), [row], len(answers), SamplingParams(), g, (0.3, 0.75))
    assert out["kept"] is kept and out["label"] == "1"
    assert out["agreement"] == answers.count("1") / len(answers)


class Echo:
    """A sampler that answers prompt i with the completions ``script[i]`` (first n) and counts its calls."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params.n, params.top_p))
        return [self.script[p.messages[0]["content"]][: params.n] for p in prompts]


def test_vote_samples_once_extracts_votes_and_measures_agreement() -> None:
    """The one recipe: one batched call of m samples, the last box of each, the majority label and
    its share of all m samples (unanswered ones count)."""
    from visplay.answers import vote
    from visplay.sampling.base import Prompt, SamplingParams

    sampler = Echo({"q1": ["\\boxed{1/2}", "x \\boxed{0.5}", "no box", "\\boxed{3}"], "q2": ["\\boxed{}"] * 4})
    prompts = [Prompt([{"role": "user", "content": q}]) for q in ("q1", "q2")]
    with Grader(workers=0) as g:
        b1, b2 = vote(sampler, prompts, 4, SamplingParams(top_p=0.9), g)
        assert vote(sampler, [], 4, SamplingParams(), g) == []  # nothing to vote on: no call
    assert sampler.calls == [(2, 4, 0.9)]
    assert b1.answers == ["1/2", "0.5", None, "3"] and b1.label == "1/2" and b1.agreement == 0.5
    assert (b1.vote.count, b1.vote.total) == (2, 3)
    assert b2.label is None and b2.agreement == 0.0 and b2.samples == ["\\boxed{}"] * 4
