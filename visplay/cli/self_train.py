"""`visplay self-train`: does majority-vote headroom turn into greedy accuracy? (one SFT round)."""

from __future__ import annotations

import argparse
from pathlib import Path

from visplay.cli.common import add_common, config, sets
from visplay.config import resolve_model
from visplay.evolve.self_train import run_self_train_probe


def add_parser(sub) -> None:
    p = sub.add_parser("self-train", help=run.__doc__, description=run.__doc__ + " Settings: the self_train section.")
    add_common(p)
    p.add_argument("--out", required=True, help="directory for self_train.json and the fine-tuned model")
    p.add_argument("--n", type=int, help="sets self_train.n: unlabeled questions to label")
    p.add_argument("--k", type=int, help="sets self_train.k: samples per question for the vote")
    p.add_argument("--eval-n", type=int, help="sets self_train.eval_n: held-out questions for greedy before/after")
    p.add_argument("--min-agreement", type=float, help="sets self_train.min_agreement: keep questions whose "
                   "majority share is at least this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Self-training probe: held-out greedy before/after one round of fine-tuning on majority labels."""
    cfg = config(args, sets((f"self_train.{k}", getattr(args, k)) for k in ("n", "k", "eval_n", "min_agreement")))
    probe = cfg.self_train
    r = run_self_train_probe(resolve_model(args.model or cfg.model), cfg.world, cfg.eval, probe, args.out)
    print(f"kept {r['kept']}/{r['questions']} unlabeled questions at agreement >= {probe.min_agreement} "
          f"(labels {r['label_accuracy']:.1%} right, by the oracle; not used in training)")
    print(f"held-out greedy: {r['greedy_before']:.1%} -> {r['greedy_after']:.1%} "
          f"({100 * (r['greedy_after'] - r['greedy_before']):+.1f} points, n={probe.eval_n})")
    print(f"fine-tuned model: {Path(args.out) / 'model'}")
    return 0
