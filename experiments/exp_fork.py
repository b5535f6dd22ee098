"""Probe a recipe change on later rounds only: fork a finished run at iteration T and rerun from there.

Copies ``SRC``'s iterations before T (hard links: the files are never written again) and its manifest
without the stages of T on, applies ``--set`` overrides to the manifest's config, resumes the loop in
``DST``, and scores the forked final reasoner on the study's held-out items (`evolve_study.score`).
The same earlier rounds on both sides make the comparison paired by construction.
Run: `python experiments/exp_fork.py runs/study11/default-s2 runs/s12/cos-s2 --at 1 --set evolve.sft_schedule=cosine`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # evolve_study: a product tool
from evolve_study import _acc, score  # noqa: E402

from visplay.config import apply_overrides, config_from_manifest  # noqa: E402


def fork(src: Path, dst: Path, at: int, overrides: list[str]) -> None:
    manifest = json.loads((src / "manifest.json").read_text())
    keep = {k: v for k, v in manifest["stages"].items() if int(k.split("/")[0].removeprefix("iter")) < at}
    config_from_manifest(apply_overrides(manifest["config"], overrides))  # validates
    dst.mkdir(parents=True)
    for t in range(at):
        shutil.copytree(src / f"iter{t}", dst / f"iter{t}", copy_function=os.link)
    manifest.update(stages=keep, command=manifest["command"] + ["# fork", str(src), f"at {at}", *overrides])
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--at", type=int, required=True, help="first iteration to rerun")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--eval-n", type=int, default=2400)
    ap.add_argument("--eval-seed", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("runs/study11/heldout"))
    ap.add_argument("--every", action="store_true", help="score every rerun iteration, not only the last")
    args = ap.parse_args()
    if not (args.dst / "manifest.json").exists():
        fork(args.src, args.dst, args.at, args.overrides)
    subprocess.run([sys.executable, "-m", "visplay.cli", "evolve", "--run", str(args.dst), "--resume"], check=True)
    manifest = json.loads((args.dst / "manifest.json").read_text())
    cfg = config_from_manifest(manifest["config"])
    base = score(Path("models") / cfg.model, args.cache / f"base-{cfg.model}-n{args.eval_n}-seed{args.eval_seed}.parquet",
                 cfg, args.eval_n, args.eval_seed)
    unl = [lv for lv in range(cfg.world.min_objects, cfg.world.max_objects + 1) if lv not in cfg.labelled_levels]
    for t in range(max(1, args.at) if args.every else cfg.evolve.iterations, cfg.evolve.iterations + 1):
        info = manifest["stages"].get(f"iter{t}/reasoner", {})
        if not info.get("model"):
            continue
        rows = score(args.dst / info["model"], args.dst / f"score-iter{t}-n{args.eval_n}-seed{args.eval_seed}.parquet",
                     cfg, args.eval_n, args.eval_seed)
        per = " ".join(f"L{lv} {100 * _acc(rows, {lv}):.1f}" for lv in unl)
        print(f"{args.dst} iter{t}: unlabelled {100 * _acc(rows, set(unl)):.1f} "
              f"({100 * (_acc(rows, set(unl)) - _acc(base, set(unl))):+.1f} vs base), "
              f"labelled {100 * (_acc(rows, set(cfg.labelled_levels)) - _acc(base, set(cfg.labelled_levels))):+.1f}; {per}",
              flush=True)


if __name__ == "__main__":
    main()
