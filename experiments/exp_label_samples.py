"""How many samples per committee member the labels need: re-vote finished labels stages on fewer.

For each ``labels.parquet`` of a committee run (trace agreement), re-runs the committee vote on the
first m of each member's recorded samples (m = 8, 6, 4 by default) and prints, per level, how many
questions are kept and how many of the graded ones are right (oracle, recorded beside the labels,
never trained on). The same samples, so it isolates m from the sampling noise of a second run.
Run: `python experiments/exp_label_samples.py runs/study9/default-s0/iter*/labels.parquet`.
"""

from __future__ import annotations

import argparse

import pyarrow.parquet as pq

from visplay.answers import Grader
from visplay.answers.committee import committee_votes
from visplay.evolve.rows import grade
from visplay.worlds.trace import trace_key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", nargs="+", help="labels.parquet files of committee runs (2 members, 8 samples each)")
    ap.add_argument("--m", type=int, nargs="+", default=[8, 6, 4])
    ap.add_argument("--recorded", type=int, default=8, help="samples each member recorded")
    args = ap.parse_args()
    with Grader(workers=0) as grader:
        for path in args.labels:
            rows = [r for r in pq.read_table(path).to_pylist() if r["valid"] and r.get("samples")]
            members = len(rows[0]["samples"]) // args.recorded
            for m in args.m:
                cut = lambda xs: [xs[i * args.recorded : i * args.recorded + m] for i in range(members)]  # noqa: E731
                answers, samples = [cut(r["answers"]) for r in rows], [cut(r["samples"]) for r in rows]
                keys = [[[trace_key(r["question"], s, a) for s, a in zip(ss, aa)] for ss, aa in zip(qs, qa)]
                        for r, qs, qa in zip(rows, samples, answers)]
                by: dict[str, list[int]] = {}
                for r, v in zip(rows, committee_votes(answers, keys, "trace", grader)):
                    if v.label is None or r["true_answer"] is None:
                        continue
                    k = by.setdefault(str(r["level"]) if r["level"] > 5 else "replay 1-5", [0, 0])
                    k[0] += 1
                    k[1] += grade(r["question"], v.label, r["true_answer"], grader)
                print(f"{path}  m={m}: " + ", ".join(f"level {lv}: {n} kept, {100 * c / n:.1f} % right"
                                                        for lv, (n, c) in sorted(by.items())))


if __name__ == "__main__":
    main()
