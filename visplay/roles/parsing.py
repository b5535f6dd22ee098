"""Output parsers for both roles: total functions that return a typed result, never raise.

`last_boxed` handles nested braces and several boxes (the last one wins), which the reference's
regex did not. Every rejection carries a reason so runs can count why outputs were dropped.
Test: `pytest tests/test_roles.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from visplay.answers.grading import MAX_CHARS, QTYPES, last_boxed
from visplay.worlds.trace import THINK_OPEN, split_trace

__all__ = ["MAX_CHARS", "QTYPES", "last_boxed"]  # with the parsers below


@dataclass(frozen=True)
class ReasonerOutput:
    answer: str | None  # content of the last box, None if there is none
    format_ok: bool  # <think>...</think> then text ending in \boxed{...}
    reason: str  # "ok" or why the format check failed


def parse_reasoner(text: str) -> ReasonerOutput:
    if not isinstance(text, str):
        return ReasonerOutput(None, False, "not a string")
    text = text[:MAX_CHARS]
    answer = last_boxed(text)
    trace = split_trace(text)
    if answer is None:
        return ReasonerOutput(None, False, "no boxed answer")
    if answer == "":
        return ReasonerOutput(None, False, "empty boxed answer")
    if trace is None or trace[0].strip():
        return ReasonerOutput(answer, False, "no <think>...</think> before the answer")
    rest = trace[2].lstrip()
    if THINK_OPEN in rest or "\\boxed" not in rest:
        return ReasonerOutput(answer, False, "answer not after </think>")
    return ReasonerOutput(answer, True, "ok")


@dataclass(frozen=True)
class QuestionerOutput:
    qtype: str | None
    question: str | None
    answer: str | None
    valid: bool
    reason: str


def _questioner_parts(text: str) -> tuple[str, str, str] | str:
    """(type, question, answer), each stripped, or why the tags do not parse. Linear time.

    Exactly the old regex ``\\s*<type>\\s*([^<]*?)\\s*</type>\\s*<question>\\s*(.*?)\\s*</question>\\s*
    <answer>\\s*(.*?)\\s*</answer>\\s*`` (fullmatch, DOTALL), whose nested ``\\s*`` around lazy groups
    backtracked for minutes on a run of spaces; tests/test_roles.py compares the two.
    """
    s = text.strip()
    if not s.startswith("<type>"):
        return "no <type> at the start"
    end_type = s.find("</type>")
    if end_type == -1 or "<" in s[6:end_type]:
        return "<type> not closed by </type>"
    rest = s[end_type + 7 :].lstrip()
    if not rest.startswith("<question>"):
        return "no <question> after </type>"
    if not rest.endswith("</answer>") or len(rest) < len("<question></answer>"):
        return "no </answer> at the end (cut off, or text after it)"
    body = rest[10:-9]
    j = body.find("</question>")
    while j != -1:
        after = body[j + 11 :].lstrip()
        if after.startswith("<answer>"):
            return s[6:end_type].strip(), body[:j].strip(), after[8:].strip()
        j = body.find("</question>", j + 1)
    return "no </question> followed by <answer>"


def parse_questioner(text: str) -> QuestionerOutput:
    """``<type>…</type><question>…</question><answer>…</answer>``, nothing else around it."""
    if not isinstance(text, str):
        return QuestionerOutput(None, None, None, False, "not a string")
    parts = _questioner_parts(text[:MAX_CHARS])
    if isinstance(parts, str):
        return QuestionerOutput(None, None, None, False, f"tags missing or out of order: {parts}")
    qtype, q, a = parts[0].lower(), parts[1], parts[2]
    if qtype not in QTYPES:
        return QuestionerOutput(None, q, a, False, f"unknown type {qtype[:40]!r}")
    if not q:
        return QuestionerOutput(qtype, None, a, False, "empty question")
    if not a:
        return QuestionerOutput(qtype, q, None, False, "empty answer")
    if any(t in q or t in a for t in ("<type>", "<question>", "<answer>", "</")):
        return QuestionerOutput(qtype, q, a, False, "nested tags")
    return QuestionerOutput(qtype, q, a, True, "ok")
