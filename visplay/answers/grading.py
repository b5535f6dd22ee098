"""Grading: one ``extract`` (the last ``\\boxed{}``), one ``grade(answer, reference, qtype)``, one
``agreement(vote)`` -- used by rewards, labeling, world evaluation and benchmarks alike.

* ``extract``: the content of the last complete ``\\boxed{...}`` (nested braces; several boxes:
  the last wins). No box means "incorrect, no_boxed_answer": the reasoner prompt asks for one.
* ``grade`` dispatches on the question type:
  - ``multiple choice`` / ``option``: option letters, ``"B"``, ``"(B)"``, ``"B. text"``, ``"Option B"``,
    or the text of one of the item's options. A reference that is not a letter (MMMU's open
    questions) falls back to ``number`` then ``free``.
  - ``numerical`` / ``number``: `visplay.answers` equivalence (normalised equality, plain numbers,
    then mathruler in a worker process with a hard timeout). A letter reference is graded as an option.
  - ``regression``: within ±``REGRESSION_TOLERANCE`` of the reference.
  - ``yesno``: the first word of the answer, yes/no/true/false; references may also be 1/0.
  - ``free``: MM-Vet's reference syntax: ``<OR>`` separates accepted alternatives and ``<AND>``
    parts that must all appear; each part matches the whole answer (normalised or equivalent) or
    appears in it as a whole phrase. A lenient approximation: MM-Vet is meant for a judge.
  Every verdict says why (``RuleVerdict.reason``), so a table can be audited item by item.
* ``agreement``: majority count over all m samples.

Test: ``pytest -q tests/test_answers.py tests/test_benchmarks.py -k grade``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from visplay.answers.equivalence import OPTION_FORM, normalize_answer
from visplay.answers.pool import Grader

MAX_CHARS = 20_000  # longer outputs are judged on their first MAX_CHARS characters

_BRACE = re.compile(r"[{}]")


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each ``{`` -> position of the ``}`` that closes it (nesting respected), in one pass."""
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    return closing


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced.

    Linear time: brace pairs are matched once for the whole text, so thousands of unclosed
    boxes (a degenerate sample) cost one pass, not one scan per box.

    >>> last_boxed(r"x \\boxed{1} then \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{unclosed") is None
    True
    """
    if not isinstance(text, str):
        return None
    text = text[:MAX_CHARS]
    closing: dict[int, int] | None = None
    for key in ("\\boxed", "\\fbox"):
        start = text.rfind(key)
        while start != -1:
            i = start + len(key)
            while i < len(text) and text[i] == " ":
                i += 1
            if i < len(text) and text[i] == "{":
                if closing is None:
                    closing = _closing_braces(text)
                if i in closing:
                    return text[i + 1 : closing[i]].strip()
            start = text.rfind(key, 0, start)
    return None


#: The question types the questioner writes and the world's grammar has (one grading rule each).
QTYPES = ("multiple choice", "numerical", "regression")
#: Benchmark answer types; "option" and "number" share the rules of "multiple choice" and "numerical".
ANSWER_TYPES = ("option", "number", "yesno", "free")
LETTERS = "ABCDEFGHIJ"  # option letters (world questions use the first five)
REGRESSION_TOLERANCE = 0.1  # a regression answer counts within ± this of the reference

_LETTER_ONLY = re.compile(r"^\(?([A-J])\)?$")
_LETTER_ALONE = re.compile(r"^(?:(?:option|answer|choice)\s*:?\s*)?\(?([A-Ja-j])\)?[.:)]?$", re.IGNORECASE)
_LETTER_TEXT = re.compile("^" + OPTION_FORM + r"\s*\S")  # "B. a red cube"
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


def extract(completion: object) -> Extraction:
    """The content of the last ``\\boxed{}`` in ``completion``.

    >>> extract(r"<think>..</think> \\boxed{\\frac{1}{2}}").answer
    '\\\\frac{1}{2}'
    >>> extract("B").reason
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
    RuleVerdict(correct=True, reason='equivalent:fraction')
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


def grade_regression(answer: str, reference: object, grader: Grader | None = None) -> RuleVerdict:
    """A number within ±``REGRESSION_TOLERANCE`` of the reference (``p/q`` allowed); anything that is
    not a number is wrong (model output is untrusted: wrong, never a crash).

    >>> grade_regression("0.45", "0.5").correct, grade_regression("1/2", "0.6").correct, grade_regression("x", "1").reason
    (True, True, 'not_a_number')
    """
    try:
        ok = abs(_to_float(answer.strip().rstrip(".").strip()) - float(str(reference))) <= REGRESSION_TOLERANCE + 1e-9
    except (ValueError, ArithmeticError):
        return RuleVerdict(False, "not_a_number")
    return RuleVerdict(ok, "within_tolerance" if ok else "outside_tolerance")


def _to_float(s: str) -> float:
    if "/" in s:
        a, b = s.split("/", 1)
        return float(a) / float(b)
    return float(s)


def grade(answer: str | None, reference: object, qtype: str, options: Sequence[str] = (),
          grader: Grader | None = None) -> RuleVerdict:
    """The one grading rule, by question type: ``QTYPES`` (the world's, the questioner's) or a
    benchmark's ``ANSWER_TYPES``; ``answer`` None (nothing boxed) is never correct.

    >>> grade("(B)", "B", "multiple choice").correct, grade("3.0", "3", "numerical").correct
    (True, True)
    """
    if answer is None:
        return RuleVerdict(False, "no_boxed_answer")
    if qtype in ("multiple choice", "option"):
        return grade_option(answer, reference, options, grader)
    if qtype in ("numerical", "number"):
        return grade_number(answer, reference, grader)
    if qtype == "regression":
        return grade_regression(answer, reference, grader)
    if qtype == "yesno":
        return grade_yesno(answer, reference)
    if qtype == "free":
        return grade_free(answer, reference, grader)
    raise ValueError(f"unknown question type {qtype!r}; choose one of {', '.join(QTYPES + ANSWER_TYPES)}")


def agreement(vote) -> float:
    """Agreement c of a majority vote: the label's count over *all* samples, unanswered ones
    included (so a question the reasoner cannot answer has low c); 0.0 without samples. The one
    definition used by the questioner reward, the labels stage and the world evaluation.

    >>> from visplay.answers.voting import majority_vote_batch
    >>> agreement(majority_vote_batch([["3", "3", "4", None]])[0])
    0.5
    """
    m = vote.total + sum(vote.dropped.values())
    return vote.count / m if m else 0.0
