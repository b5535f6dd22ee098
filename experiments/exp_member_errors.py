"""How independent two committee members' mistakes are, per level, on the study's held-out set.

Scores both models greedily on world seed ``--eval-seed`` (n items over all levels, the same items
and cache as `scripts/evolve_study.py`), then prints per level: each model's error rate, the share of
items both get wrong, what that share would be if their errors were independent (the product), and
the share where both are wrong *with the same answer* -- the errors a committee vote cannot catch.
Run: `python experiments/exp_member_errors.py tiny-rows tiny-rows-reversed --root runs/study10`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # evolve_study: a product tool
from evolve_study import score  # noqa: E402


def main() -> None:
    from visplay.config import load_config, resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs=2)
    ap.add_argument("--root", default="runs/study")
    ap.add_argument("--eval-n", type=int, default=2400)
    ap.add_argument("--eval-seed", type=int, default=1)
    args = ap.parse_args()
    cfg = load_config("tiny")
    rows = []
    for name in args.models:
        model = resolve_model(name)
        cache = Path(args.root) / "heldout" / f"base-{model.name}-n{args.eval_n}-seed{args.eval_seed}.parquet"
        rows.append({r["id"] + r["question"]: r for r in score(model, cache, cfg, args.eval_n, args.eval_seed)})
    a, b = rows
    print(f"| level | n | {args.models[0]} wrong | {args.models[1]} wrong | both wrong | if independent | both wrong, same answer |")
    print("|---|---|---|---|---|---|---|")
    for lv in sorted({r["level"] for r in a.values()}):
        keys = [k for k, r in a.items() if r["level"] == lv and k in b]
        wa = [not a[k]["greedy_correct"] for k in keys]
        wb = [not b[k]["greedy_correct"] for k in keys]
        both = sum(x and y for x, y in zip(wa, wb))
        same = sum(x and y and a[k]["greedy_answer"] == b[k]["greedy_answer"] for k, x, y in zip(keys, wa, wb))
        n = len(keys)
        print(f"| {lv} | {n} | {100 * sum(wa) / n:.1f} % | {100 * sum(wb) / n:.1f} % | {100 * both / n:.1f} % | "
              f"{100 * sum(wa) * sum(wb) / n / n:.1f} % | {100 * same / n:.1f} % |")


if __name__ == "__main__":
    main()
