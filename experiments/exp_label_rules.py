"""Which label rule keeps right labels without a task verifier: re-vote recorded labels under several rules.

For each ``labels.parquet`` (a committee run that recorded every member's samples), re-runs the committee
vote on the same samples under each rule and prints, per level, how many questions it keeps and how many of
those are right (the oracle answer recorded beside the labels, for measurement only). Same samples for every
rule, so the difference is the rule alone. Rules:

* ``answer``: the members' majority answers agree (the plain committee vote);
* ``trace``: the world's trace key (listed objects + answer, answer follows from the listing: a task verifier);
* ``chain``: the members' modal chains state the same clauses, numbers masked (`visplay.answers.committee.chain_key`),
  which knows no task: order-free exact agreement of whole chains;
* ``last``: ``chain``, counting only chains whose last number is their answer (a generic consistency check);
* ``RULE@X``: ... and every member has at least a share X of its samples on the label (``answer@1``: unanimous);

Run: ``python experiments/exp_label_rules.py runs/study17/default-s1*/iter1/labels.parquet``.
"""

from __future__ import annotations

import argparse

import pyarrow.parquet as pq

from visplay.answers import Grader
from visplay.answers.committee import _NUMBER, chain_key, committee_votes
from visplay.evolve.rows import grade
from visplay.worlds.trace import think_text, trace_key

RULES = ("answer", "answer@1", "trace", "trace@0.75", "chain", "chain@0.75", "chain@1", "last", "last@0.75")


def last_key(completion, answer):
    """``chain_key``, only for chains whose last number is their (numeric) answer: a generic consistency
    check (the answer is the last quantity the chain computed), no task rule."""
    key, numbers = chain_key(completion, answer), _NUMBER.findall(think_text(completion) or "")
    try:
        return None if key and numbers and float(numbers[-1]) != float(answer) else key
    except (TypeError, ValueError):  # a non-numeric answer: nothing to check
        return key


KEYS = {"trace": trace_key, "chain": lambda q, s, a: chain_key(s, a), "last": lambda q, s, a: last_key(s, a)}


def vote(rule, rows, answers, samples, grader):
    rule, _, floor = rule.partition("@")  # "chain@0.75": keep where every member has >= 0.75 of its samples on it
    if rule == "answer":
        votes = committee_votes(answers, None, "answer", grader)
    else:
        key = KEYS[rule]
        keys = [[[key(r["question"], s, a) for s, a in zip(ss, aa)] for ss, aa in zip(qs, qa)]
                for r, qs, qa in zip(rows, samples, answers)]
        votes = committee_votes(answers, keys, "trace", grader)
    floor = float(floor or 0)
    return [v if v.label is not None and min(v.member_agreement) >= floor else None for v in votes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", nargs="+", help="labels.parquet files of committee runs")
    ap.add_argument("--samples", type=int, default=4, help="samples each member recorded")
    ap.add_argument("--rules", nargs="+", default=list(RULES))
    args = ap.parse_args()
    total: dict[str, dict[str, list[int]]] = {}
    with Grader(workers=0) as grader:
        for path in args.labels:
            rows = [r for r in pq.read_table(path).to_pylist() if r["valid"] and r.get("samples")]
            members = len(rows[0]["samples"]) // args.samples
            cut = lambda xs: [xs[i * args.samples : (i + 1) * args.samples] for i in range(members)]  # noqa: E731
            answers, samples = [cut(r["answers"]) for r in rows], [cut(r["samples"]) for r in rows]
            for rule in args.rules:
                by: dict[str, list[int]] = {}
                for r, v in zip(rows, vote(rule, rows, answers, samples, grader)):
                    if v is None or r["true_answer"] is None:
                        continue
                    ok = grade(r["question"], v.label, r["true_answer"], grader)
                    for k in (str(r["level"]), "all"):
                        for d in (by, total.setdefault(rule, {})):
                            d.setdefault(k, [0, 0])
                            d[k][0] += 1
                            d[k][1] += ok
                print(f"{path} {rule:17s}: " + ", ".join(f"L{lv} {n} kept {100 * c / n:.1f}%"
                                                          for lv, (n, c) in sorted(by.items())))
    print("\npooled:")
    for rule, by in total.items():
        print(f"  {rule:17s}: " + ", ".join(f"L{lv} {n} kept {100 * c / n:.1f}%" for lv, (n, c) in sorted(by.items())))


if __name__ == "__main__":
    main()
