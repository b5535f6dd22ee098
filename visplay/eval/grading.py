"""Rule-based grading of benchmark answers: one small function per answer type, no model, no network.

A completion is graded on the content of its last ``\\boxed{...}`` (nested braces; the last box
wins; ``visplay.roles.parsing.last_boxed``). No box means "incorrect, no_boxed_answer": the
reasoner prompt asks for one, so a missing box is the model's fault, not the grader's.

* ``option``: option letters, ``"B"``, ``"(B)"``, ``"B. text"``, ``"Option B"``, or the text of
  one of the item's options. A reference that is not a letter (MMMU's open questions) falls back
  to ``number`` then ``free``.
* ``number``: ``visplay.answers`` equivalence (normalised equality, plain numbers, then mathruler
  in a worker process with a hard timeout). A letter reference (a multiple-choice MathVision
  item) is graded as ``option``.
* ``yesno``: the first word of the answer, yes/no/true/false; references may also be 1/0.
* ``free``: MM-Vet's reference syntax: ``<OR>`` separates accepted alternatives and ``<AND>``
  parts that must all appear; each part matches the whole answer (normalised or equivalent) or
  appears in it as a whole phrase. This is a lenient approximation: MM-Vet is meant for a judge.

Every verdict says why (``RuleVerdict.reason``), so a table can be audited item by item.
Test: ``pytest -q tests/test_benchmarks.py -k grade``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from visplay.answers import Grader, normalize_answer
from visplay.roles.parsing import last_boxed

ANSWER_TYPES = ("option", "number", "yesno", "free")
LETTERS = "ABCDEFGHIJ"

_LETTER_ONLY = re.compile(r"^\(?([A-J])\)?$")
_LETTER_ALONE = re.compile(r"^(?:(?:option|answer|choice)\s*:?\s*)?\(?([A-Ja-j])\)?[.:)]?$", re.IGNORECASE)
_LETTER_TEXT = re.compile(r"^(?:\(([A-J])\)|([A-J])[.:)])\s*\S")
_WORD = re.compile(r"[a-z]+")
_YES = {"yes", "true", "1", "correct"}
_NO = {"no", "false", "0", "incorrect"}


@dataclass(frozen=True)
class RuleVerdict:
    """A rule-based verdict: ``correct`` and a short machine-readable ``reason``."""

    correct: bool
    reason: str


@dataclass(frozen=True)
class Extraction:
    """The graded part of a completion: the last box's content, or None with the reason."""

    answer: str | None
    reason: str  # "boxed", "no_boxed_answer" or "empty_box"


def extract_answer(completion: object) -> Extraction:
    """The content of the last ``\\boxed{}`` in ``completion``.

    >>> extract_answer(r"<think>..</think> \\boxed{\\frac{1}{2}}").answer
    '\\\\frac{1}{2}'
    >>> extract_answer("B").reason
    'no_boxed_answer'
    """
    boxed = last_boxed(completion) if isinstance(completion, str) else None
    if boxed is None:
        return Extraction(None, "no_boxed_answer")
    if not boxed.strip():
        return Extraction(None, "empty_box")
    return Extraction(boxed, "boxed")


def reference_letter(reference: object) -> str | None:
    """The option letter a reference names (``"B"``, ``"(B)"``, ``"B."``), else None."""
    m = _LETTER_ONLY.match(normalize_answer(reference))
    return m.group(1) if m else None


def option_letter(answer: str, options: Sequence[str] = ()) -> str | None:
    """The option letter an answer picks: a letter form, or the exact text of one option.

    >>> option_letter("(c)"), option_letter("B. a red cube"), option_letter("blue", ["red", "Blue"])
    ('C', 'B', 'B')
    >>> option_letter("A cat") is None
    True
    """
    norm = normalize_answer(answer)
    m = _LETTER_ALONE.match(norm)
    if m:
        return m.group(1).upper()
    m = _LETTER_TEXT.match(norm)
    if m:
        return m.group(1) or m.group(2)
    for i, opt in enumerate(options[: len(LETTERS)]):
        if normalize_answer(opt).lower() == norm.lower() and norm:
            return LETTERS[i]
    return None


def grade_option(answer: str, reference: object, options: Sequence[str] = (), grader: Grader | None = None) -> RuleVerdict:
    """Multiple choice: the picked letter equals the reference letter.

    >>> grade_option("(B)", "B"), grade_option("A", "B").reason
    (RuleVerdict(correct=True, reason='option_match'), 'option_mismatch')
    """
    ref = reference_letter(reference)
    if ref is None:  # an open question inside a multiple-choice benchmark
        verdict = grade_number(answer, reference, grader)
        return verdict if verdict.correct else grade_free(answer, reference, grader)
    picked = option_letter(answer, options)
    if picked is None:
        return RuleVerdict(False, "not_an_option")
    return RuleVerdict(picked == ref, "option_match" if picked == ref else "option_mismatch")


def grade_number(answer: str, reference: object, grader: Grader | None = None) -> RuleVerdict:
    """Math equivalence (``visplay.answers``); a letter reference is graded as an option.

    >>> grade_number("0.5", "\\\\frac{1}{2}", Grader(workers=0))
    RuleVerdict(correct=True, reason='equivalent:grader')
    """
    if reference_letter(reference) is not None:
        return grade_option(answer, reference, (), grader)
    verdict = _equivalence(answer, reference, grader)
    return RuleVerdict(verdict[0], ("equivalent:" if verdict[0] else "not_equivalent:") + verdict[1])


def yes_no(text: object) -> str | None:
    """``"yes"``/``"no"`` from the first word of ``text`` (yes/no/true/false/1/0), else None.

    >>> yes_no("Yes, it is."), yes_no(r"\\text{No}"), yes_no("maybe")
    ('yes', 'no', None)
    """
    norm = normalize_answer(text).lower()
    words = [norm] if norm in ("1", "0") else _WORD.findall(norm)[:1]
    if not words:
        return None
    return "yes" if words[0] in _YES else "no" if words[0] in _NO else None


def grade_yesno(answer: str, reference: object) -> RuleVerdict:
    """Yes/no questions (HallusionBench): first word of the answer against the reference.

    >>> grade_yesno("Yes.", "yes"), grade_yesno("no", "1").reason
    (RuleVerdict(correct=True, reason='yesno_match'), 'yesno_mismatch')
    """
    ref = yes_no(reference)
    if ref is None:
        return RuleVerdict(False, "reference_not_yes_no")
    got = yes_no(answer)
    if got is None:
        return RuleVerdict(False, "not_yes_no")
    return RuleVerdict(got == ref, "yesno_match" if got == ref else "yesno_mismatch")


def grade_free(answer: str, reference: object, grader: Grader | None = None) -> RuleVerdict:
    """Short free text with MM-Vet's ``<OR>``/``<AND>`` reference syntax (lenient, see module doc).

    >>> grade_free("It is a red car", "red<AND>car"), grade_free("blue", "red<OR>blue").correct
    (RuleVerdict(correct=True, reason='text_match'), True)
    >>> grade_free("12 apples", "2").correct
    False
    """
    ref = "" if reference is None else str(reference)
    for alternative in ref.split("<OR>"):
        parts = [p for p in (s.strip() for s in alternative.split("<AND>")) if p]
        if parts and all(_part_matches(answer, part, grader) for part in parts):
            return RuleVerdict(True, "text_match")
    return RuleVerdict(False, "text_mismatch")


def _part_matches(answer: str, part: str, grader: Grader | None) -> bool:
    na, np_ = normalize_answer(answer).lower(), normalize_answer(part).lower()
    if not np_:
        return False
    if na == np_ or re.search(r"(?<!\w)" + re.escape(np_) + r"(?!\w)", na):
        return True
    return any(c.isdigit() for c in np_) and _equivalence(answer, part, grader)[0]


def _equivalence(a: object, b: object, grader: Grader | None) -> tuple[bool, str]:
    """(equal, how) from a Grader (hard timeout) or, without one, an in-process one."""
    if grader is None:
        with Grader(workers=0) as local:
            v = local.verdict(a, b)
    else:
        v = grader.verdict(a, b)
    return v.equal, v.reason


def grade_rule(answer_type: str, answer: str | None, reference: object, options: Sequence[str] = (),
               grader: Grader | None = None) -> RuleVerdict:
    """Dispatch on ``answer_type`` (one of ``ANSWER_TYPES``); ``answer`` None is never correct."""
    if answer is None:
        return RuleVerdict(False, "no_boxed_answer")
    if answer_type == "option":
        return grade_option(answer, reference, options, grader)
    if answer_type == "number":
        return grade_number(answer, reference, grader)
    if answer_type == "yesno":
        return grade_yesno(answer, reference)
    if answer_type == "free":
        return grade_free(answer, reference, grader)
    raise ValueError(f"unknown answer type {answer_type!r}; choose one of {', '.join(ANSWER_TYPES)}")
