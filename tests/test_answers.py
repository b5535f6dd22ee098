"""normalize_answer, the fast path against mathruler, and the Grader's processes, cache and hard timeout.

In-memory, no network. Worker processes are started by a few tests (spawn for the real grader,
fork for the injected slow comparisons, to keep start-up short); every test checks that its
workers are gone afterwards.
Run: ``pytest -q tests/test_answers.py`` (~15 s on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visplay.answers import Grader, Verdict, equivalent, fast_verdict, grade_pair, normalize_answer, pair_key


# -- comparisons injected into workers (module level, so they pickle by reference)
def hang_on_marker(a: str, b: str) -> bool:
    """Busy-loops forever (like a runaway sympy call) when either side is "hang"."""
    if "hang" in (a, b):
        while True:
            pass
    return a.lower() == b.lower()


def raise_on_marker(a: str, b: str) -> bool:
    if "boom" in (a, b):
        raise ZeroDivisionError("boom")
    return a.lower() == b.lower()


def exit_on_marker(a: str, b: str) -> bool:
    if "die" in (a, b):
        os._exit(3)
    return a.lower() == b.lower()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); it is gone for our purposes once reaped or a zombie
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- normalize_answer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  42 ", "42"),
        ("a   b\n c", "a b c"),
        ("$x^2$", "x^2"),
        ("$$\\frac{1}{2}$$", "\\frac{1}{2}"),
        ("\\text{Red}", "red"),
        ("$\\text{ Blue }$.", "blue"),
        ("3.", "3"),
        (".5", ".5"),
        ("...", "..."),
        ("(B)", "B"),
        ("B.", "B"),
        ("C)", "C"),
        ("D:", "D"),
        ("(b)", "(b)"),
        ("B", "B"),
        ("x", "x"),
        ("Yes", "yes"),
        ("New York", "new york"),
        ("\\text{a}{b}", "\\text{a}{b}"),
        ("", ""),
        (None, ""),
        (12, "12"),
        (0.5, "0.5"),
    ],
)
def test_normalize_examples(raw: object, expected: str) -> None:
    assert normalize_answer(raw) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" $.()ABab1\\{}text\n-", max_size=20))
def test_normalize_is_idempotent_and_total(text: str) -> None:
    once = normalize_answer(text)
    assert isinstance(once, str)
    assert normalize_answer(once) == once


# ---------------------------------------------------------------- the fast path agrees with mathruler

DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=18)
PLAIN = st.one_of(
    st.builds(lambda s, i, f: f"{s}{i}.{f}", st.sampled_from(["", "-"]), DIGITS, DIGITS),
    st.builds(lambda s, i: f"{s}{i}", st.sampled_from(["", "-"]), DIGITS),
    st.builds(lambda s, f: f"{s}.{f}", st.sampled_from(["", "-"]), DIGITS),
    st.sampled_from(["0.5", "0.50", ".5", "1.0", "1.00000001", "0.99999999", "2", "0.1", "0.10", "-0", "0.30000000000000004"]),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr).filter(lambda s: "e" not in s),
)
SMALL = st.integers(0, 40).map(str)
FRACTION = st.builds(
    lambda sign, form, p, q: sign + form.format(p=p, q=q),
    st.sampled_from(["", "-"]),
    st.sampled_from(["{p}/{q}", "\\frac{{{p}}}{{{q}}}", "\\dfrac{{{p}}}{{{q}}}", "\\tfrac{{{p}}}{{{q}}}", "\\frac{{-{p}}}{{{q}}}"]),
    SMALL,
    st.integers(0, 16).map(str),
) | st.builds(lambda p, q: f"\\frac{p}{q}", st.integers(0, 9), st.integers(1, 9))
NEAR_FRACTION = st.builds(lambda p, q, d: f"{p / q:.{d}f}", st.integers(0, 12), st.integers(1, 12), st.integers(1, 17))
LETTER = st.sampled_from(list("AaBbCcEeIiNnOoQqSsXxZz"))
ANSWER_ATOM = st.one_of(PLAIN, FRACTION, NEAR_FRACTION, LETTER)


@settings(max_examples=250, deadline=None)
@given(ANSWER_ATOM, ANSWER_ATOM)
def test_fast_path_agrees_with_grade_answer(a: str, b: str) -> None:
    na, nb = normalize_answer(a), normalize_answer(b)
    fast = fast_verdict(na, nb)
    if fast is not None:
        assert fast[0] == (na == nb or grade_pair(na, nb)), (na, nb, fast)


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 30), st.integers(1, 30), st.integers(1, 17), st.sampled_from(["{p}/{q}", "\\frac{{{p}}}{{{q}}}"]))
def test_fraction_against_its_own_rounded_decimal(p: int, q: int, digits: int, form: str) -> None:
    fraction, decimal = form.format(p=p, q=q), f"{p / q:.{digits}f}"
    fast = fast_verdict(normalize_answer(fraction), normalize_answer(decimal))
    if fast is not None:
        assert fast[0] == grade_pair(fraction, decimal), (fraction, decimal, fast)


def test_fast_path_decides_the_common_cases() -> None:
    assert fast_verdict("3", "3.0") == (True, "numeric")
    assert fast_verdict("3", "4") == (False, "numeric")
    assert fast_verdict("1", "1.00000001") == (True, "numeric")  # mathruler's 1e-7 integer tolerance
    assert fast_verdict("0.1", "0.10") == (True, "numeric")
    assert fast_verdict("1/2", "\\frac{1}{2}") == (True, "fraction")
    assert fast_verdict("2/4", "1/2") == (False, "fraction")  # mathruler does not reduce fractions
    assert fast_verdict("2/4", "0.5") == (True, "fraction")  # ... but compares them with decimals
    assert fast_verdict("4/2", "2") == (False, "fraction")
    assert fast_verdict("1/3", "0.333") == (False, "fraction")
    assert fast_verdict("1/3", "0.333333333333333") == (False, "fraction")
    assert fast_verdict("-\\frac{3}{4}", "-0.75") == (True, "fraction")
    assert fast_verdict("A", "a") == (True, "letter")
    assert fast_verdict("A", "B") == (False, "letter")
    assert fast_verdict("0.1", "0.10000000000000000000") is None  # > 15 digits: sympy decides
    assert fast_verdict("red", "blue") is None


# ---------------------------------------------------------------- equivalent


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "1/2", True),
        ("$\\dfrac{1}{2}$", "0.5", True),
        ("(B)", "B", True),
        ("B.", "(B)", True),
        ("Red", "red.", True),
        ("1", "1.0", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("3", "4", False),
        ("A", "B", False),
        ("yes", "no", False),
        ("\\frac{8}{2}", "4", False),  # mathruler: an integer answer needs an integer string
    ],
)
def test_equivalent_examples(a: str, b: str, same: bool) -> None:
    assert equivalent(a, b) is same
    assert equivalent(b, a) is same


@pytest.mark.parametrize("a", [None, "", 7, 2.5, b"7", ["7"], float("nan"), "x" * 100_000])
def test_equivalent_bad_inputs_do_not_raise(a: object) -> None:
    assert isinstance(equivalent(a, "7"), bool)


def _nested_frac(depth: int) -> str:
    text = "1"
    for _ in range(depth):
        text = "\\frac{1}{" + text + "}"
    return text


@pytest.mark.parametrize("weird", ["9^{9^{9^9}}", _nested_frac(50), "((((((((((1))))))))))" * 20])
def test_pathological_latex_in_process_is_bounded(weird: str) -> None:
    start = time.perf_counter()
    assert equivalent(weird, "1") is False
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------- the Grader


def test_inline_grader_cache_is_unordered_and_counted() -> None:
    with Grader(workers=0) as grader:
        first = grader.verdict("yes", "no")
        second = grader.verdict("no", "yes")
        assert first == second == Verdict(False, "grader")
        assert grader.stats["grader"] == 1 and grader.stats["cache_hit"] == 1
        assert pair_key("no", "yes") in grader._cache
        assert grader.verdict("3", "3.0") == Verdict(True, "numeric")


def test_worker_grader_matches_in_process_and_leaves_no_process() -> None:
    pairs = [("yes", "Yes"), ("red", "blue"), ("x^2+2x+1", "(x+1)^2"), ("\\sqrt{8}", "2\\sqrt{2}"), ("A", "B"), ("1/3", "0.33")]
    with Grader(workers=0) as inline:
        expected = [inline.equivalent(a, b) for a, b in pairs]
    with Grader(workers=1, timeout=30) as grader:
        got = [grader.equivalent(a, b) for a, b in pairs]
        pids = grader.worker_pids
        assert pids and all(_alive(p) for p in pids)
    assert got == expected == [True, False, True, True, False, False]
    assert not any(_alive(p) for p in pids)


def test_hung_comparison_is_killed_and_the_batch_goes_on() -> None:
    # Answers like "x1" reach the worker: no fast path applies to them.
    grader = Grader(timeout=1.0, workers=1, compare=hang_on_marker, start_method="fork", worker_init=None)
    with grader:
        grader.resolve([("a1", "b1")])  # the worker is up and answering
        first_pid = grader.worker_pids[0]
        start = time.perf_counter()
        grader.resolve([("x1", "X1"), ("hang", "b1"), ("c1", "C1"), ("hang", "d1"), ("e1", "f1")])
        elapsed = time.perf_counter() - start
        assert elapsed < 2 * 1.0 + 8  # two timeouts of 1 s, plus start-up of the replacements
        assert grader.verdict("hang", "b1") == Verdict(False, "timeout")
        assert grader.verdict("d1", "hang") == Verdict(False, "timeout")
        assert grader.verdict("x1", "X1") == Verdict(True, "grader")
        assert grader.verdict("c1", "C1") == Verdict(True, "grader")
        assert grader.verdict("e1", "f1") == Verdict(False, "grader")
        assert grader.stats["timeout"] == 2
        assert not _alive(first_pid)  # the hung worker was killed ...
        assert grader.equivalent("g1", "G1")  # ... and replaced
        pids = grader.worker_pids
    assert pids and not any(_alive(p) for p in pids)


def test_comparison_errors_and_dead_workers_count_as_not_equivalent() -> None:
    with Grader(timeout=5.0, workers=1, compare=raise_on_marker, start_method="fork", worker_init=None) as grader:
        assert grader.verdict("boom", "x1") == Verdict(False, "error")
        assert grader.verdict("y1", "Y1") == Verdict(True, "grader")
    with Grader(timeout=5.0, workers=1, compare=exit_on_marker, start_method="fork", worker_init=None) as grader:
        assert grader.verdict("die", "x1") == Verdict(False, "error")
        assert grader.verdict("y1", "Y1") == Verdict(True, "grader")


def test_worker_that_cannot_start_raises_clearly() -> None:
    with Grader(workers=1, compare=hang_on_marker, start_method="fork", worker_init=_broken_init) as grader:
        with pytest.raises(RuntimeError, match="grader worker"):
            grader.equivalent("p1", "q1")
    assert grader.worker_pids == []


def _broken_init() -> None:
    raise ImportError("no such module")


ORPHAN_SCRIPT = """
import sys, threading, time
from visplay.answers import Grader

def hang(a, b):
    while True:
        time.sleep(0.01)

grader = Grader(workers=1, timeout=600, compare=hang, start_method="fork", worker_init=None)
# blocks: the worker hangs and the timeout is long
threading.Thread(target=grader.resolve, args=([("a1", "b1")],), daemon=True).start()
while not grader.worker_pids:
    time.sleep(0.01)
print(grader.worker_pids[0], flush=True)
time.sleep(600)
"""


def test_worker_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        time.sleep(0.5)
        assert _alive(worker_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid)


def test_grader_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Grader(timeout=0)
    with pytest.raises(ValueError, match="workers"):
        Grader(workers=-1)


def test_pathological_latex_through_workers_is_bounded() -> None:
    weird = ["9^{9^{9^9}}", _nested_frac(50), "9**9**9**9", "100000000!"]
    with Grader(workers=1, timeout=3.0) as grader:
        start = time.perf_counter()
        verdicts = [grader.verdict(w, "1") for w in weird]
        pids = grader.worker_pids
    assert all(not v.equal for v in verdicts)
    assert time.perf_counter() - start < 4 * 3.0 + 20
    assert not any(_alive(p) for p in pids)
