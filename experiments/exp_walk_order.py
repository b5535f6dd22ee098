"""Experiment (docs/experiments.md, session 7): does walking the objects in a random order make the
base's samples disagree where they are wrong, i.e. give majority voting headroom above the labelled
levels (the thing session 6 found missing: errors shared by every sample)?

    python experiments/exp_walk_order.py --order random  --out runs/walk/random   # the treatment
    python experiments/exp_walk_order.py --order reading --out runs/walk/reading  # compute-matched control

Fine-tunes `models/tiny` for ``--steps`` on its own labelled levels (presets/tiny.yaml `pretrain`,
levels 1-5), with the counting families' marked walk in a random order per example (tallies
recomputed, answer unchanged) or in reading order, then scores the model with `visplay eval` on two
disjoint held-out sets (world seeds 0 and 1): greedy, maj@k and label accuracy at c >= 0.7 by level.
The random order is this script's (it wraps `visplay.tiny.pretrain.example`); the row walks are the
product's `pretrain.walk` (session 8-9: `--order rows` built models/tiny-rows, `--order rows-reversed`
models/tiny-rows-reversed).
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
from pathlib import Path

from visplay.worlds.trace import WALKS

REPO = Path(__file__).resolve().parents[1]
WALK = re.compile(r"<think>(.*)</think>(\\boxed\{.*\})", re.S)


def shuffled_walk(target: str, rng: random.Random) -> str:
    """The marked walk of ``target`` in a random order, each hit re-marked with its running tally.

    >>> shuffled_walk("<think>a1 red 1. b2 blue -. c3 red 2</think>\\\\boxed{2}", random.Random(1))
    '<think>b2 blue -. c3 red 1. a1 red 2</think>\\\\boxed{2}'
    """
    m = WALK.fullmatch(target)
    if not m or m.group(1) == "none":
        return target
    parts = m.group(1).split(". ")
    rng.shuffle(parts)
    tally, out = 0, []
    for part in parts:
        *head, mark = part.split(" ")
        if mark != "-":
            tally += 1
            mark = str(tally)
        out.append(" ".join([*head, mark]))
    return f"<think>{'. '.join(out)}</think>{m.group(2)}"


def finetune(order: str, out: Path, steps: int, lr: float, seed: int, init: Path) -> None:
    import visplay.tiny.pretrain as pretrain_module
    from visplay.config import load_config

    plain = pretrain_module.example

    def example(i: int, cfg) -> dict:
        ex = plain(i, cfg)
        if order == "random" and ex["target"].startswith("<think>"):
            ex = {**ex, "target": shuffled_walk(ex["target"], random.Random(f"order:{cfg.seed}:{i}"))}
        return ex

    pretrain_module.example = example  # WorldDataset looks it up at call time
    walk = order if order in WALKS else "reading"  # the row walks are the product's (pretrain.walk)
    cfg = load_config("tiny", [f"pretrain.walk={walk}", f"pretrain.steps={steps}", f"pretrain.lr={lr}",
                               "pretrain.warmup_steps=50", f"pretrain.seed={seed}",
                               f"pretrain.save_steps={max(steps // 4, 1)}"]).pretrain
    pretrain_module.pretrain(out, cfg, resume=True, init=init)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--order", choices=("random", *WALKS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="eval budget (row walks at level 8 need ~70)")
    ap.add_argument("--init", type=Path, default=REPO / "models" / "tiny", help="model to fine-tune (default: the shipped base)")
    args = ap.parse_args()
    model = args.out / "model"
    if not (model / "model.safetensors").is_file():
        finetune(args.order, model, args.steps, args.lr, args.seed, args.init)
    for world_seed in (0, 1):
        ev = args.out / f"eval-seed{world_seed}"
        if not (ev / "summary.json").is_file():
            subprocess.run([sys.executable, "-m", "visplay.cli", "eval", "--model", str(model), "--n", str(args.n),
                            "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens), "--world-seed", str(world_seed), "--out", str(ev)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
