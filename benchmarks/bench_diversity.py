"""Benchmark: ``cluster_shares`` (sparse n-gram counts + scipy linkage) vs the nltk/sklearn reference.

Measures, in one run and side by side for each batch size: wall and CPU time of the reference
(``tests/reference.py`` ``reference_cluster_shares``: nltk ``sentence_bleu`` double loop +
sklearn ``AgglomerativeClustering``) and of ``visplay.rewards.diversity.cluster_shares``, both
speed ratios (CPU time is the fairer one on a shared, loaded machine), whether the shares are
identical (max absolute difference), and our peak memory (tracemalloc: numpy/scipy allocations in
this process, measured in a second, traced call). Targets: >= 100x at N=4096 and N=1024.

Inputs are realistic questioner output built from a seed: ~30 question templates with slots
(colours, shapes, sizes, sides, numbers), adjacent-word swaps, dropped words, appended tails,
exact duplicates, and a few one-word, short and empty questions.

Recorded (2 shared cores, ``nice -n 19 python benchmarks/bench_diversity.py``):
             N | ref wall s | ref CPU s | ours wall s | ours CPU s | x wall | x CPU | max |diff| | peak MB
          1024 |      74.61 |     74.42 |       0.236 |      0.452 |   317x |  165x |     0.0e+00 |    42.3
          4096 |    1043.53 |   1038.88 |       1.841 |      2.624 |   567x |  396x |     0.0e+00 |   208.1
(our CPU time exceeds wall time where BLAS used both cores; process max RSS at N=4096: ~270 MB)

Run (the reference at N=4096 takes ~17 CPU minutes on a slow 2-core machine):
    nice -n 19 python benchmarks/bench_diversity.py                 # N = 1024 and 4096
    nice -n 19 python benchmarks/bench_diversity.py --n 256 512     # quick
    nice -n 19 python benchmarks/bench_diversity.py --n 4096 --skip-reference   # ours only
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

import numpy as np

from visplay.rewards.diversity import cluster_shares

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers below live there
from reference import reference_cluster_shares  # noqa: E402

COLORS = ["red", "blue", "green", "yellow", "purple", "gray", "brown", "cyan", "orange", "black"]
SHAPES = ["circle", "square", "triangle", "cube", "sphere", "cylinder", "star", "hexagon"]
SIZES = ["small", "large", "tiny", "big", "medium"]
SIDES = ["left", "right", "top", "bottom", "center"]
TEMPLATES = [
    "How many {c} {s}s are there in the image?",
    "How many {c} {s}s are there?",
    "What is the color of the {z} {s} on the {d}?",
    "Is the {c} {s} to the {d} of the {c2} {s2}?",
    "How many objects are either {c} or {s}-shaped?",
    "What is the total number of {s}s and {s2}s in the picture?",
    "If all {c} objects are removed, how many {s}s remain?",
    "Which shape is closest to the {c} {s}?",
    "What fraction of the {s}s are {c}? Give your answer as a fraction.",
    "Are there more {c} {s}s than {c2} {s2}s?",
    "What is the area of the {z} {c} {s} in square units if its side is {k}?",
    "Count the {s}s.",
    "What shape is the {c} object?",
    "How many {s}s are {z}er than the {c} {s2}?",
    "What is the sum of the numbers written on the {c} {s}s?",
    "If you add {k} more {c} {s}s, how many {s}s will there be in total?",
    "What is the ratio of {c} {s}s to {c2} {s2}s?",
    "Which object is on the far {d} of the image?",
    "What color is the {s} that is next to the {z} {c2} {s2}?",
    "Is there a {c} {s} in the image? Answer yes or no.",
    "How many {s}s touch the {d} edge of the image?",
    "What is the perimeter of the {c} {s} if each side measures {k} units?",
    "Of the {s}s in the image, how many are not {c}?",
    "What is the probability that a randomly chosen object is a {c} {s}?",
    "Which is larger: the {c} {s} or the {c2} {s2}?",
    "How many {c} objects are {d} of the {z} {s}?",
    "Estimate the angle at the top vertex of the {c} triangle in degrees.",
    "What is {k} times the number of {c} {s}s?",
]
TAILS = ["Answer with a single number.", "Explain briefly.", "Choose from (A) {k} (B) {k2} (C) {k3}.", "Think step by step."]
ODD = ["Why?", "Count.", "What?", "How many?", "Describe the image.", "", "Which one is bigger?"]


def make_questions(n: int, seed: int) -> list[str]:
    """A seeded batch of ``n`` questioner-style questions with near-duplicates and duplicates."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if out and roll < 0.12:
            out.append(rng.choice(out))  # exact duplicate of an earlier question
        elif roll < 0.16:
            out.append(rng.choice(ODD))
        else:
            out.append(_perturb(_fill(rng.choice(TEMPLATES), rng), rng))
    return out


def _fill(template: str, rng: random.Random) -> str:
    ks = [str(rng.randint(2, 12)) for _ in range(3)]
    return template.format(
        c=rng.choice(COLORS), c2=rng.choice(COLORS), s=rng.choice(SHAPES), s2=rng.choice(SHAPES),
        z=rng.choice(SIZES), d=rng.choice(SIDES), k=ks[0], k2=ks[1], k3=ks[2],
    )


def _perturb(question: str, rng: random.Random) -> str:
    words = question.split()
    if rng.random() < 0.3 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    if rng.random() < 0.2 and len(words) > 3:
        del words[rng.randrange(len(words))]
    if rng.random() < 0.25:
        words += _fill(rng.choice(TAILS), rng).split()
    return " ".join(words)


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(fn, *args) -> tuple[np.ndarray, float, float]:
    """(result, wall seconds, CPU seconds): CPU time is the fair number on a shared, loaded machine."""
    wall, cpu = time.perf_counter(), _cpu()
    result = fn(*args)
    return np.asarray(result), time.perf_counter() - wall, _cpu() - cpu


def _ours_with_memory(questions: list[str], threshold: float) -> tuple[np.ndarray, float, float, float]:
    """Time one untraced call, then measure peak traced memory in a second call (tracing slows it)."""
    shares, wall, cpu = _timed(cluster_shares, questions, threshold)
    tracemalloc.start()
    cluster_shares(questions, threshold)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return shares, wall, cpu, peak / 2**20


def run(sizes: Sequence[int], seed: int, threshold: float, skip_reference: bool) -> list[dict[str, float]]:
    rows = []
    for n in sizes:
        questions = make_questions(n, seed)
        ours, wall, cpu, peak_mb = _ours_with_memory(questions, threshold)
        row = {"n": n, "ours_wall": wall, "ours_cpu": cpu, "peak_mb": peak_mb, "clusters": len(set(ours.tolist()))}
        if not skip_reference:
            ref, ref_wall, ref_cpu = _timed(reference_cluster_shares, questions, threshold)
            row.update(ref_wall=ref_wall, ref_cpu=ref_cpu, max_abs_diff=float(np.max(np.abs(ref - ours))))
        rows.append(row)
        _print_row(row)
    return rows


HEADER = ("N", "ref wall s", "ref CPU s", "ours wall s", "ours CPU s", "x wall", "x CPU", "max |diff|", "identical", "peak MB")


def _print_header() -> None:
    print(" | ".join(f"{h:>11}" for h in HEADER))
    print("-" * (14 * len(HEADER) - 3))


def _print_row(row: dict[str, float]) -> None:
    has_ref = "ref_wall" in row
    cells = [
        f"{row['n']:d}",
        f"{row['ref_wall']:.2f}" if has_ref else "skipped",
        f"{row['ref_cpu']:.2f}" if has_ref else "-",
        f"{row['ours_wall']:.3f}",
        f"{row['ours_cpu']:.3f}",
        f"{row['ref_wall'] / row['ours_wall']:.0f}x" if has_ref else "-",
        f"{row['ref_cpu'] / row['ours_cpu']:.0f}x" if has_ref else "-",
        f"{row['max_abs_diff']:.1e}" if has_ref else "-",
        ("yes" if row["max_abs_diff"] <= 1e-9 else "NO") if has_ref else "-",
        f"{row['peak_mb']:.1f}",
    ]
    print(" | ".join(f"{c:>11}" for c in cells), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096], help="batch sizes (default: 1024 4096)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--skip-reference", action="store_true", help="time only cluster_shares")
    args = parser.parse_args(argv)
    print(f"cluster_shares vs reference (nltk sentence_bleu loop + sklearn), threshold={args.threshold}, seed={args.seed}")
    _print_header()
    rows = run(args.n, args.seed, args.threshold, args.skip_reference)
    failed = [r for r in rows if "max_abs_diff" in r and r["max_abs_diff"] > 1e-9]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
