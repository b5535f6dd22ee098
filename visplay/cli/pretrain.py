"""`visplay pretrain`: rebuild the embedded model from the procedural world (resumes from its checkpoints)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from visplay.cli.common import add_common, config, sets
from visplay.config import REPO_ROOT, Config
from visplay.tiny.pretrain import pretrain
from visplay.model_files import dress_checkpoint


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help=run.__doc__, description=run.__doc__)
    add_common(p, model_help=None)
    p.add_argument("--out", default=str(REPO_ROOT / "models" / "tiny"), help="output model directory")
    p.add_argument("--steps", type=int, help="sets pretrain.steps (e.g. a few for a smoke run)")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Pretrain the tiny model on world data (resumes from its checkpoints) and save it."""
    cfg = config(args, sets([("pretrain.steps", args.steps)]))
    out = Path(args.out)
    t0 = time.time()
    pretrain(out, cfg.pretrain, resume=not args.restart)
    _card(out, cfg, args.preset)
    print(f"pretrained model saved to {out} in {(time.time() - t0) / 60:.1f} min")
    return 0


def _card(out: Path, cfg: Config, preset: str) -> None:
    """Model card, chat template and generation defaults of a `visplay pretrain` output."""
    p = cfg.pretrain
    dress_checkpoint(out, f"visplay tiny (pretrained, {out.name})", {
        "base model": "none: built from scratch (`visplay/tiny/build.py`, real Qwen2.5-VL architecture)",
        "stage": "pretrain (supervised, both roles)",
        "trained": f"`visplay pretrain --preset {preset}`: {p.steps} steps x batch {p.batch_size}, "
                   f"lr {p.lr:g} cosine, world scenes of the train split",
        "measured": f"`visplay eval --model {out}` (held-out world accuracy)",
    }, max_new_tokens=cfg.eval.max_new_tokens)
