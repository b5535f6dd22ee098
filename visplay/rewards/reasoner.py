"""Reasoner rewards, as TRL calls them: ``accuracy_reward`` and ``format_reward``.

    accuracy = 1 when the last ``\\boxed{}`` of the completion equals the silver ``label`` column
               (the shared answer equivalence of `visplay.answers`: "0.5", "1/2" and "\\frac{1}{2}"
               all match a label "1/2"), else 0
    format   = 1 when the completion is ``<think>…</think>`` followed by text ending in ``\\boxed{…}``

TRL adds them with ``reward_weights`` from the config (``evolve.reasoner.reward_weights``,
default [0.9, 0.1], the reference's weights); each logs its mean as ``reasoner/<part>``.

>>> accuracy_reward(None, [r"<think>a1</think>\\boxed{1/2}", r"\\boxed{0.5}", "no"], label=["0.5"] * 3)
[1.0, 1.0, 0.0]
>>> format_reward(None, [r"<think>a1</think>\\boxed{1/2}", r"\\boxed{0.5}", "no"])
[1.0, 0.0, 0.0]

Test: `pytest tests/test_rewards.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from visplay.answers import Grader, normalize_answer
from visplay.rewards.text import completion_text
from visplay.roles.parsing import parse_reasoner


def accuracy_reward(prompts, completions: Sequence, label: Sequence[str], grader: Grader | None = None,
                    log_metric: Callable[[str, float], None] | None = None, **_) -> list[float]:
    """1.0 per completion whose boxed answer equals its ``label`` (a dataset column), else 0.0."""
    if grader is None:
        with Grader(workers=0) as inline:
            return accuracy_reward(prompts, completions, label, inline, log_metric)
    parsed = [parse_reasoner(completion_text(c)) for c in completions]
    # One round of (possibly symbolic, time-bounded) comparisons for the whole batch.
    grader.resolve({(normalize_answer(p.answer), normalize_answer(lab)) for p, lab in zip(parsed, label)
                    if p.answer is not None})
    acc = [float(p.answer is not None and grader.equivalent(p.answer, str(lab))) for p, lab in zip(parsed, label)]
    if log_metric is not None and acc:
        log_metric("reasoner/accuracy", sum(acc) / len(acc))
    return acc


def format_reward(prompts, completions: Sequence, log_metric: Callable[[str, float], None] | None = None,
                  **_) -> list[float]:
    """1.0 per completion in the ``<think>…</think> … \\boxed{…}`` format, else 0.0."""
    fmt = [float(parse_reasoner(completion_text(c)).format_ok) for c in completions]
    if log_metric is not None and fmt:
        log_metric("reasoner/format", sum(fmt) / len(fmt))
    return fmt
