"""Reasoner reward: 0.9 · accuracy(last \\boxed{} vs the silver label) + 0.1 · format.

format = `<think>…</think>` followed by text ending in `\\boxed{…}`; accuracy uses the shared
answer equivalence (`visplay.answers`), so "0.5", "1/2" and "\\frac{1}{2}" all match a label "1/2".

>>> reasoner_reward([r"<think>a1</think>\\boxed{1/2}", r"\\boxed{0.5}", "no"], ["0.5", "0.5", "0.5"])
[1.0, 0.9, 0.0]

Test: `pytest tests/test_rewards.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from visplay.answers import Grader, normalize_answer
from visplay.roles.parsing import parse_reasoner

ACCURACY_WEIGHT = 0.9
FORMAT_WEIGHT = 0.1


def reasoner_reward_parts(
    completions: Sequence[str], labels: Sequence[str], grader: Grader | None = None
) -> tuple[list[float], list[float]]:
    """(accuracy, format) per completion, each 0 or 1."""
    parsed = [parse_reasoner(c) for c in completions]
    if grader is None:
        with Grader(workers=0) as inline:
            return reasoner_reward_parts(completions, labels, inline)
    # One round of (possibly symbolic, time-bounded) comparisons for the whole batch.
    grader.resolve({(normalize_answer(p.answer), normalize_answer(lab)) for p, lab in zip(parsed, labels) if p.answer is not None})
    acc = [float(p.answer is not None and grader.equivalent(p.answer, str(lab))) for p, lab in zip(parsed, labels)]
    fmt = [float(p.format_ok) for p in parsed]
    return acc, fmt


def reasoner_reward(completions: Sequence[str], labels: Sequence[str], grader: Grader | None = None) -> list[float]:
    acc, fmt = reasoner_reward_parts(completions, labels, grader)
    return [round(ACCURACY_WEIGHT * a + FORMAT_WEIGHT * f, 10) for a, f in zip(acc, fmt)]
