"""Answer normalisation and equivalence (part of `visplay.answers`, the layer shared by rewards,
labeling and evaluation).

* ``normalize_answer(s)``: a small, documented canonical form (see its docstring).
* ``equivalent(a, b)``: normalised strings equal, or mathruler's ``grade_answer`` accepts the pair
  in either direction. ``grade_answer`` is applied to the *normalised* strings, so the verdict is
  a function of the normalised pair and symmetric; that is what makes caching and de-duplication
  exact.
* ``Grader``: the same verdict for many pairs. Cheap pairs are decided in this process (normalised
  equality; two plain decimal numbers compared numerically with ``grade_answer``'s own rules);
  the rest run in worker processes with a hard timeout per comparison: a comparison that runs
  past it (e.g. sympy hanging) is killed with its worker, counted as *not equivalent* with reason
  ``"timeout"``, the worker is replaced, and the batch goes on. Verdicts are cached for the
  Grader's lifetime under the unordered normalised pair (the verdict is symmetric). Use it as a
  context manager so no process outlives it; ``workers=0`` compares in-process (no timeout).

>>> normalize_answer("  $\\\\text{Red}$. ")
'red'
>>> normalize_answer("(B)")
'B'
>>> fast_verdict("0.5", "1/2")
(True, 'fraction')

Test: ``pytest -q tests/test_answers.py``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

#: An option letter as written: "(B)", "B.", "B)", "B:" (capital letters; group 1 or 2 is the letter).
OPTION_FORM = r"(?:\(([A-Z])\)|([A-Z])[.):])"
_OPTION = re.compile(OPTION_FORM)
_WORDS = re.compile(r"[A-Za-z][A-Za-z '\-]*")
_TEXT = re.compile(r"\\text\{(.*)\}", re.DOTALL)
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)", re.ASCII)
_FRACTION = re.compile(r"(-?)(?:(\d+)/(\d+)|\\[dt]?frac\{(-?)(\d+)\}\{(\d+)\}|\\[dt]?frac(\d)(\d))", re.ASCII)
_SINGLE_LETTER = re.compile(r"[A-Za-z]")
_SYMPY_FLOAT_DIGITS = 15  # sympy parses a decimal with <= 15 digits as a 53-bit Float, i.e. Python's float


# ---------------------------------------------------------------- normalisation


def normalize_answer(s: object) -> str:
    """Canonical form of an answer string, for equality checks and as the cache key.

    Steps (each one simple, applied until nothing changes):
    1. ``None`` -> ``""``; other non-strings -> ``str(s)``; strip; collapse whitespace runs to one space.
    2. Remove a surrounding ``$...$`` / ``$$...$$`` and a whole-string ``\\text{...}``.
    3. Remove one trailing period (``"3."`` -> ``"3"``; a leading ``"."`` as in ``".5"`` is kept).
    4. Option letters: ``"(B)"``, ``"B."``, ``"B)"``, ``"B:"`` -> ``"B"`` (capital letters only).
    5. Plain words (letters, spaces, hyphens, apostrophes; more than one letter) are lowercased:
       ``"Red"`` -> ``"red"``. Single letters keep their case (option letters, variables).
    Numbers and LaTeX are otherwise left alone: ``grade_answer`` handles their equivalence.
    """
    text = "" if s is None else (s if isinstance(s, str) else str(s))
    text = " ".join(text.split())
    previous = None
    while text != previous:
        previous = text
        text = _strip_wrappers(text)
    option = _OPTION.fullmatch(text)
    if option:
        return option.group(1) or option.group(2)
    if len(text) > 1 and _WORDS.fullmatch(text):
        return text.lower()
    return text


def _strip_wrappers(text: str) -> str:
    for fence in ("$$", "$"):
        if len(text) > 2 * len(fence) and text.startswith(fence) and text.endswith(fence):
            return text[len(fence) : -len(fence)].strip()
    match = _TEXT.fullmatch(text)
    if match and _balanced(match.group(1)):
        return match.group(1).strip()
    if len(text) > 1 and text.endswith(".") and not text.endswith(".."):
        return text[:-1].rstrip()
    return text


def _balanced(text: str) -> bool:
    """Braces pair up and never close before they open. Vectorised: `normalize_answer` peels one
    ``\\text{`` layer per call, and a model can nest thousands (a Python loop here took seconds)."""
    opens = text.count("{")
    if opens != text.count("}"):
        return False
    if opens == 0:
        return True
    import numpy as np

    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    depth = np.cumsum((codes == 0x7B).astype(np.int32) - (codes == 0x7D).astype(np.int32))
    return int(depth.min()) >= 0


# ---------------------------------------------------------------- the verdict


def grade_pair(a: str, b: str) -> bool:
    """mathruler's ``grade_answer`` in both directions (sympy; may be slow or hang on odd input)."""
    from mathruler.grader import grade_answer

    return bool(grade_answer(a, b)) or bool(grade_answer(b, a))


def fast_verdict(na: str, nb: str) -> tuple[bool, str] | None:
    """The verdict for two normalised answers when it needs no sympy, else None.

    Each rule reproduces ``grade_pair`` exactly on its inputs (tests compare them on random input):

    * equal strings -> (True, "equal");
    * two plain decimal numbers -> "numeric": a number within 1e-7 of an integer becomes that
      integer (via float, as mathruler does); two such integers match iff they are the same
      integer; an integer never matches a non-integer; two non-integers with <= 15 significant
      digits match iff their floats are equal (sympy parses them as 53-bit Floats);
    * simple fractions (``p/q``, ``\\frac{p}{q}``, ``\\dfrac``/``\\tfrac``, ``\\frac12``, one
      optional minus, <= 15 digits) -> "fraction": two fractions match iff they have the same sign,
      numerator and denominator as written (mathruler does not reduce: 2/4 != 1/2); a fraction
      and a non-integer decimal match iff equal as floats (sympy: Rational - Float at 53 bits);
      a fraction never matches an integer;
    * two single letters -> "letter": equal ignoring case (mathruler lowercases; distinct letters
      are distinct sympy symbols).
    Anything else (or longer numbers) goes to the grader.
    """
    if na == nb:
        return True, "equal"
    if _SINGLE_LETTER.fullmatch(na) and _SINGLE_LETTER.fullmatch(nb):
        return na.lower() == nb.lower(), "letter"
    fa, fb = _fraction(na), _fraction(nb)
    if fa is not None and fb is not None:
        return fa[0] == fb[0], "fraction"
    if fa is not None or fb is not None:
        fraction, other = (fa, nb) if fa is not None else (fb, na)
        assert fraction is not None
        if not _PLAIN_NUMBER.fullmatch(other):
            return None
        if _integer_form(other) is not None:
            return False, "fraction"
        if _digits(other) > _SYMPY_FLOAT_DIGITS:
            return None
        return fraction[1] == float(other), "fraction"
    if not (_PLAIN_NUMBER.fullmatch(na) and _PLAIN_NUMBER.fullmatch(nb)):
        return None
    ia, ib = _integer_form(na), _integer_form(nb)
    if ia is not None or ib is not None:
        return ia == ib, "numeric"
    if _digits(na) > _SYMPY_FLOAT_DIGITS or _digits(nb) > _SYMPY_FLOAT_DIGITS:
        return None
    return float(na) == float(nb), "numeric"


def _fraction(text: str) -> tuple[str, float] | None:
    """(mathruler's normalised "-p/q", value) for a simple fraction, else None."""
    match = _FRACTION.fullmatch(text)
    if match is None:
        return None
    outer, p1, q1, inner, p2, q2, p3, q3 = match.groups()
    if outer and inner:
        return None
    p, q = p1 or p2 or p3, q1 or q2 or q3
    if len(p) > _SYMPY_FLOAT_DIGITS or len(q) > _SYMPY_FLOAT_DIGITS or q == "0":
        return None
    if (len(p) > 1 and p[0] == "0") or q[0] == "0":
        return None
    sign = "-" if (outer or inner) else ""
    value = int(p) / int(q)
    return f"{sign}{p}/{q}", -value if sign else value


def _integer_form(number: str) -> str | None:
    """mathruler's ``_normalize`` for a plain number: ``str(int(round(x)))`` when |x - round(x)| <= 1e-7."""
    try:
        value = float(number)
        rounded = int(round(value))
    except (OverflowError, ValueError):
        return None
    return str(rounded) if abs(value - rounded) <= 1e-7 else None


def _digits(number: str) -> int:
    try:
        return len(Decimal(number).as_tuple().digits)
    except InvalidOperation:  # pragma: no cover - the regex only lets decimals through
        return _SYMPY_FLOAT_DIGITS + 1
