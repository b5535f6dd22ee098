"""Output parsers for both roles: total functions that return a typed result, never raise.

`last_boxed` handles nested braces and several boxes (the last one wins), which the reference's
regex did not. Every rejection carries a reason so runs can count why outputs were dropped.
Test: `pytest tests/test_roles.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QTYPES = ("multiple choice", "numerical", "regression")
MAX_CHARS = 20_000  # longer outputs are judged on their first MAX_CHARS characters

_QUESTIONER_RE = re.compile(
    r"\s*<type>\s*(?P<type>[^<]*?)\s*</type>\s*<question>\s*(?P<q>.*?)\s*</question>\s*"
    r"<answer>\s*(?P<a>.*?)\s*</answer>\s*",
    re.DOTALL,
)
_THINK_RE = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*(?P<rest>.*)", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced.

    >>> last_boxed(r"x \\boxed{1} then \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{unclosed") is None
    True
    """
    if not isinstance(text, str):
        return None
    text = text[:MAX_CHARS]
    for key in ("\\boxed", "\\fbox"):
        start = text.rfind(key)
        while start != -1:
            i = start + len(key)
            while i < len(text) and text[i] == " ":
                i += 1
            if i < len(text) and text[i] == "{":
                depth, j = 0, i
                while j < len(text):
                    if text[j] == "{":
                        depth += 1
                    elif text[j] == "}":
                        depth -= 1
                        if depth == 0:
                            return text[i + 1 : j].strip()
                    j += 1
            start = text.rfind(key, 0, start)
    return None


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
    m = _THINK_RE.fullmatch(text)
    if answer is None:
        return ReasonerOutput(None, False, "no boxed answer")
    if answer == "":
        return ReasonerOutput(None, False, "empty boxed answer")
    if not m:
        return ReasonerOutput(answer, False, "no <think>...</think> before the answer")
    if "<think>" in m.group("rest") or "\\boxed" not in m.group("rest"):
        return ReasonerOutput(answer, False, "answer not after </think>")
    return ReasonerOutput(answer, True, "ok")


@dataclass(frozen=True)
class QuestionerOutput:
    qtype: str | None
    question: str | None
    answer: str | None
    valid: bool
    reason: str


def parse_questioner(text: str) -> QuestionerOutput:
    """``<type>…</type><question>…</question><answer>…</answer>``, nothing else around it."""
    if not isinstance(text, str):
        return QuestionerOutput(None, None, None, False, "not a string")
    m = _QUESTIONER_RE.fullmatch(text[:MAX_CHARS])
    if not m:
        return QuestionerOutput(None, None, None, False, "tags missing or out of order")
    qtype, q, a = m.group("type").lower(), m.group("q"), m.group("a")
    if qtype not in QTYPES:
        return QuestionerOutput(None, q, a, False, f"unknown type {qtype[:40]!r}")
    if not q:
        return QuestionerOutput(qtype, None, a, False, "empty question")
    if not a:
        return QuestionerOutput(qtype, q, None, False, "empty answer")
    if any(t in q or t in a for t in ("<type>", "<question>", "<answer>", "</")):
        return QuestionerOutput(qtype, q, a, False, "nested tags")
    return QuestionerOutput(qtype, q, a, True, "ok")
