"""How far apart two runs on the same images land: the final reasoners of runs A, B, C ... against run A's,
paired per eval item, with an item-level standard error.

What is "noise" for one seed's images? Two runs of the same seed that differ only in how they sample (e.g.
``evolve.chunk_size``, which moves every chunk's sampling stream) or only in how they execute (in process vs
``hardware.launcher``) answer it: their gap is what a change of no consequence moves the final table by.

Run: ``python experiments/exp_same_images.py runs/study18/default-s15 runs/noise-s15 runs/launch-s15
--eval-seed 9 --cache runs/same-images``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from evolve_study import _acc, models_of, score  # noqa: E402

from visplay.config import load_config  # noqa: E402
from visplay.eval.world import seeds_gain  # noqa: E402

GROUPS = {"labelled": range(1, 6), "L6-8": range(6, 9), "L9-10": range(9, 11)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories; the first is the reference")
    ap.add_argument("--eval-seed", type=int, required=True)
    ap.add_argument("--eval-n", type=int, default=3000)
    ap.add_argument("--cache", type=Path, required=True, help="where each final reasoner's eval rows are kept")
    args = ap.parse_args()
    cfg = load_config("tiny", [])
    scored = {}
    for run in args.runs:
        final = max(models_of(run, json.loads((run / "manifest.json").read_text())).items(),
                    key=lambda kv: int(kv[0][4:]))  # iter<t>: the last evaluated iteration's reasoner
        name = f"{run.parent.name}-{run.name}-{final[0]}-n{args.eval_n}-seed{args.eval_seed}.parquet"
        scored[run] = score(final[1], args.cache / name, cfg, args.eval_n, args.eval_seed)
        print(f"{run} ({final[0]}): " + ", ".join(f"{g} {100 * _acc(scored[run], lv):.1f}" for g, lv in GROUPS.items()))
    ref = args.runs[0]
    for run in args.runs[1:]:
        parts = []
        for g, lv in GROUPS.items():
            pair = ([r["greedy_correct"] for r in scored[ref] if r["level"] in lv],
                    [r["greedy_correct"] for r in scored[run] if r["level"] in lv])
            d = seeds_gain([pair])
            parts.append(f"{g} {100 * d['gain']:+.1f} ± {100 * d['se']:.1f} (n={d['n']})")
        print(f"{run} - {ref}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
