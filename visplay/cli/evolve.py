"""`visplay evolve`: the self-evolution loop, resumable, with a before/after table (or `--dry-run`: the plan)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from visplay import console
from visplay import modes
from visplay.cli.common import add_common, add_sampler_url, config, default_config, server_sets, sets
from visplay.config import config_from_manifest
from visplay.evolve.plan import build_plan, format_plan
from visplay.run.rundir import RunDir


def add_parser(sub) -> None:
    loop = f"{run.__doc__.rstrip('.')}; the default preset runs {modes.pipeline(default_config())}."
    p = sub.add_parser("evolve", help=loop, description=f"{loop} `visplay evolve --dry-run` says what a preset runs.")
    add_common(p, model_help="base model directory or embedded name (sets model)")
    p.add_argument("--run", help="run directory (default: runs/<preset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its last finished stage "
                   "(with the run's own config: --preset/--set/--model do not apply)")
    p.add_argument("--iterations", type=int, help="sets evolve.iterations (default 3)")
    add_sampler_url(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (what runs: objective, labels, curriculum, devices; stages, sizes, "
                   "tokens, memory per GPU) without loading anything")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="no progress bars: stage summaries and the result only")
    loud.add_argument("--verbose", action="store_true", help="also print every GRPO step's full log dict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the self-evolution loop."""
    # the loop brings the reward stack (scipy) with it: loaded when it runs, so `visplay --help` starts at once
    from visplay.evolve.loop import run_evolve, summary_table

    console.set_level("quiet" if args.quiet else "verbose" if args.verbose else "normal")
    extra = sets([("evolve.iterations", args.iterations), ("model", args.model)]) + server_sets(args.sampler_url)
    if args.resume:
        given = [flag for flag, on in (("--preset", args.preset != "tiny"), ("--set", args.overrides),
                                       ("a config flag", extra), ("--dry-run", args.dry_run)) if on]
        if given:
            raise ValueError(f"--resume continues a run with its own config (manifest.json); {', '.join(given)} "
                             "would be ignored: drop it, or start a new run")
        if not args.run:
            raise ValueError("--resume needs --run RUN_DIR")
    if args.dry_run:
        cfg = config(args, extra)
        print(format_plan(cfg, build_plan(cfg, args.preset)))
        return 0
    run_dir = Path(args.run or f"runs/{Path(args.preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = (config_from_manifest(RunDir(run_dir).manifest()["config"], f"{run_dir}/manifest.json") if args.resume
           else config(args, extra))
    print(f"run directory: {run_dir}  (resume with: visplay evolve --run {run_dir} --resume)")
    try:
        results = run_evolve(cfg, run_dir, resume=args.resume, command=["visplay", *sys.argv[1:]])
    except KeyboardInterrupt:
        print(f"interrupted; continue with: visplay evolve --run {run_dir} --resume", file=sys.stderr)
        return 130
    print(summary_table(results, run_dir, cfg.eval.k))
    print(f"report: {run_dir / 'report.html'}")
    return 0
