"""Answers: extraction, normalisation, equivalence, grading, the vote and agreement -- the one layer
shared by rewards, labeling, world evaluation and benchmarks.

* `visplay.answers.equivalence`: ``normalize_answer``, ``fast_verdict``, ``grade_pair`` (mathruler's
  ``grade_answer`` either way): the verdict.
* `visplay.answers.pool`: ``Grader``, the same verdicts for many pairs with a hard timeout per
  symbolic comparison (worker processes) and a shared cache; ``equivalent`` for one pair.
* `visplay.answers.grading`: ``extract`` (the last ``\\\\boxed{}``), ``grade(answer, reference,
  qtype)`` (one rule per question type, world and benchmark alike), ``agreement(vote)``.
* `visplay.answers.voting`: ``vote(sampler, prompts, m, params, grader)`` -- sample, extract,
  majority vote, agreement: the one recipe -- with ``sample_answers`` (its first half, which the
  committee vote of `visplay.answers.committee` shares) and ``majority_vote_batch`` underneath it.

>>> normalize_answer("  $\\\\text{Red}$. ")
'red'
>>> grade("0.5", "\\\\frac{1}{2}", "numerical").correct
True

Test: ``pytest -q tests/test_answers.py``.
"""

from visplay.answers.equivalence import fast_verdict, grade_pair, normalize_answer
from visplay.answers.grading import (
    ANSWER_TYPES,
    LETTERS,
    QTYPES,
    REGRESSION_TOLERANCE,
    Extraction,
    RuleVerdict,
    agreement,
    extract,
    grade,
    last_boxed,
    option_letter,
)
from visplay.answers.pool import Grader, Verdict, equivalent, pair_key, prepare_mathruler
from visplay.answers.voting import Ballot, Vote, majority_vote, majority_vote_batch, rate, sample_answers, vote

__all__ = [
    "ANSWER_TYPES", "LETTERS", "QTYPES", "REGRESSION_TOLERANCE", "Ballot", "Extraction", "Grader", "RuleVerdict",
    "Verdict", "Vote", "agreement", "equivalent", "extract", "fast_verdict", "grade", "grade_pair", "last_boxed",
    "majority_vote", "majority_vote_batch", "normalize_answer", "option_letter", "pair_key", "prepare_mathruler",
    "rate", "sample_answers", "vote",
]
