"""Benchmark: ``majority_vote_batch`` (dedup + fast path + batch cache + worker processes) vs the reference.

Measures, in one run and side by side: wall and CPU time of the reference
(``tests/reference.py`` ``reference_majority_vote``: mathruler ``grade_answer`` in both
directions for every new answer against every group representative, question by question) and of
``visplay.answers.voting.majority_vote_batch`` with a fresh ``Grader`` (worker start-up included; CPU
time includes the worker processes), both speed ratios (CPU is the fairer one on a shared, loaded
machine), whether labels and counts are identical, grader statistics, and our peak memory
(tracemalloc, this process, second run). Target: >= 20x on 2,000 questions x 9 answers.

Inputs are built from a seed: per question a true answer of one kind — integer 37%, decimal 12%,
fraction incl. LaTeX \\frac 20%, option letter 18%, yes/no or colour word 13% — sampled 9 times
in varying surface forms ("1/2", "0.5", "\\frac{1}{2}", "$\\dfrac{1}{2}$", "(B)", "B.", "Red")
mixed with plausible wrong answers, the occasional None or empty answer. ``--radicals 0.03`` adds
radical/pi answers ("5\\sqrt{2}", "\\frac{\\pi}{3}"): every distinct pair of those costs ~30 ms of
sympy in both implementations, so they bound the speed-up.

Recorded (2 shared cores, workers=1, 2000 x 9; identical labels and counts in both runs):
    radicals | ref wall s | ref CPU s | ours wall s | ours CPU s | x wall | x CPU | grader calls
          0% |      45.89 |     45.31 |        1.04 |       0.92 |    44x |   49x |           21
          3% |      65.77 |     64.61 |        5.24 |       5.06 |    13x |   13x |          197

Run:
    nice -n 19 python benchmarks/bench_majority_vote.py                  # 2000 x 9
    nice -n 19 python benchmarks/bench_majority_vote.py --n 200          # quick
    nice -n 19 python benchmarks/bench_majority_vote.py --radicals 0.03  # sympy-heavy mix
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from visplay.answers import Grader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers below live there
from reference import reference_majority_vote  # noqa: E402
from visplay.answers.voting import Vote, majority_vote_batch

COLOURS = ["red", "blue", "green", "yellow", "purple", "gray"]


def _integer(rng: random.Random) -> tuple[list[str], list[str]]:
    k = rng.randint(0, 20)
    return [str(k), f"{k}.0", f"${k}$", f"{k}.", f"\\text{{{k}}}"], [str(k + 1), str(max(0, k - 1)), str(2 * k + 3)]


def _decimal(rng: random.Random) -> tuple[list[str], list[str]]:
    x = rng.randint(1, 99) / 10
    return [f"{x}", f"{x:.2f}", f"{x}0", f"${x}$"], [f"{x + 0.1:.1f}", f"{x * 2:.1f}", f"{x / 2:.2f}"]


def _fraction(rng: random.Random) -> tuple[list[str], list[str]]:
    p, q = rng.choice([(1, 2), (1, 3), (2, 3), (1, 4), (3, 4), (2, 5), (5, 8), (7, 10)])
    forms = [f"{p}/{q}", f"\\frac{{{p}}}{{{q}}}", f"$\\dfrac{{{p}}}{{{q}}}$", f"\\tfrac{p}{q}"]
    if q in (2, 4, 5, 8, 10):
        forms.append(f"{p / q:g}")
    return forms, [f"{q}/{p}", f"{p}/{q + 1}", f"\\frac{{{p + 1}}}{{{q}}}", f"{p / q + 0.1:.2f}"]


def _latex(rng: random.Random) -> tuple[list[str], list[str]]:
    k = rng.randint(2, 9)
    return (
        rng.choice([[f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}", f"{k}*\\sqrt{{2}}"], [f"\\frac{{\\pi}}{{{k}}}", f"\\pi/{k}"]]),
        [f"{k + 1}\\sqrt{{2}}", f"\\sqrt{{{k}}}", f"{k}\\pi", f"2\\pi/{k}"],
    )


def _option(rng: random.Random) -> tuple[list[str], list[str]]:
    letter = rng.choice("ABCD")
    others = [c for c in "ABCD" if c != letter]
    return [letter, f"({letter})", f"{letter}.", f"{letter})"], others + [f"({others[0]})"]


def _word(rng: random.Random) -> tuple[list[str], list[str]]:
    if rng.random() < 0.5:
        return ["yes", "Yes", "YES", "yes."], ["no", "No"]
    colour = rng.choice(COLOURS)
    return [colour, colour.title(), f"\\text{{{colour}}}"], [c for c in COLOURS if c != colour][:3]


# Mostly counts, options and simple fractions as in visual QA (the kinds the questioner is asked for).
KINDS = [(_integer, 0.37), (_decimal, 0.12), (_fraction, 0.20), (_option, 0.18), (_word, 0.13)]  # sums to 1


def make_answer_sets(n: int, k: int, seed: int, radicals: float = 0.0) -> list[list[str | None]]:
    """``n`` questions with ``k`` sampled answers each: surface forms of a true answer + distractors.

    ``radicals`` is the share of questions whose answer is a radical or a multiple of pi.
    """
    rng = random.Random(seed)
    makers, weights = zip(*KINDS, (_latex, radicals / (1 - radicals)))
    out: list[list[str | None]] = []
    for _ in range(n):
        right, wrong = rng.choices(makers, weights)[0](rng)
        accuracy = rng.random()
        answers: list[str | None] = []
        for _ in range(k):
            roll = rng.random()
            if roll < 0.03:
                answers.append(rng.choice([None, "", "  "]))
            elif roll < 0.03 + 0.97 * accuracy:
                answers.append(rng.choice(right))
            else:
                answers.append(rng.choice(wrong))
        out.append(answers)
    return out


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (the grader workers, once closed)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _ours(sets: list[list[str | None]], workers: int, timeout: float) -> tuple[list[Vote], dict[str, int], float, float]:
    """Votes, grader stats, wall and CPU seconds of a fresh Grader (start-up included)."""
    wall, cpu = time.perf_counter(), _cpu()
    with Grader(workers=workers, timeout=timeout) as grader:
        votes = majority_vote_batch(sets, grader)
        stats = dict(grader.stats)
    return votes, stats, time.perf_counter() - wall, _cpu() - cpu


def _peak_mb(sets: list[list[str | None]], workers: int, timeout: float) -> float:
    """Peak traced memory of this process in a second run (tracing slows it down)."""
    tracemalloc.start()
    with Grader(workers=workers, timeout=timeout) as grader:
        majority_vote_batch(sets, grader)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


HEADER = ("questions", "ref wall s", "ref CPU s", "ours wall s", "ours CPU s", "x wall", "x CPU", "identical", "mismatches", "peak MB")


def run(n: int, k: int, seed: int, radicals: float, workers: int, timeout: float, skip_reference: bool) -> int:
    sets = make_answer_sets(n, k, seed, radicals)
    votes, stats, wall, cpu = _ours(sets, workers, timeout)
    peak = _peak_mb(sets, workers, timeout)
    print(f"majority vote vs reference (grade_answer pair loop), {n} questions x {k} answers, "
          f"radicals={radicals:.0%}, seed={seed}, workers={workers}")
    print(" | ".join(f"{h:>11}" for h in HEADER))
    print("-" * (14 * len(HEADER) - 3))
    cells = [str(n)]
    mismatches = 0
    if skip_reference:
        cells += ["skipped", "-", f"{wall:.2f}", f"{cpu:.2f}", "-", "-", "-", "-"]
    else:
        ref_wall, ref_cpu = time.perf_counter(), _cpu()
        reference = [reference_majority_vote(answers) for answers in sets]
        ref_wall, ref_cpu = time.perf_counter() - ref_wall, _cpu() - ref_cpu
        ours = [v.as_tuple() for v in votes]
        diffs = [(i, a, b) for i, (a, b) in enumerate(zip(ours, reference)) if a != b]
        mismatches = len(diffs)
        cells += [f"{ref_wall:.2f}", f"{ref_cpu:.2f}", f"{wall:.2f}", f"{cpu:.2f}", f"{ref_wall / wall:.0f}x",
                  f"{ref_cpu / cpu:.0f}x", "yes" if not diffs else "NO", str(mismatches)]
    cells.append(f"{peak:.1f}")
    print(" | ".join(f"{c:>11}" for c in cells))
    print(f"grader stats: {stats}")
    if not skip_reference:
        for i, a, b in diffs:
            print(f"  question {i}: ours={a} reference={b} answers={sets[i]}")
    return 1 if mismatches else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="questions (default 2000)")
    parser.add_argument("--k", type=int, default=9, help="answers per question (default 9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--radicals", type=float, default=0.0, help="share of radical/pi answers (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="grader worker processes (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="hard timeout per comparison, seconds")
    parser.add_argument("--skip-reference", action="store_true", help="time only majority_vote_batch")
    args = parser.parse_args(argv)
    return run(args.n, args.k, args.seed, args.radicals, args.workers, args.timeout, args.skip_reference)


if __name__ == "__main__":
    raise SystemExit(main())
