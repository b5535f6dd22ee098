"""The `visplay` command: one module a subcommand, `main(argv) -> int` so tests call it directly.

    visplay pretrain [--out models/tiny]      rebuild the embedded model from the world       (pretrain.py)
    visplay eval [--model tiny] [--n 500]     held-out world accuracy: greedy, maj@k, pass@k   (eval.py)
    visplay eval --benchmarks LIST --out DIR  the paper's benchmarks, rule-based and judged    (eval.py)
    visplay self-train --out DIR              one round of SFT on majority labels, measured    (self_train.py)
    visplay evolve [--run DIR] [--resume]     the self-evolution loop, with a before/after table (evolve.py)
    visplay evolve --dry-run                  what a preset runs, and its sizes, tokens, memory; loads nothing
    visplay serve --model PATH [--port 8000]  an OpenAI-compatible endpoint over the transformers sampler (serve.py)
    visplay report RUN_DIR                    one self-contained HTML page about a run          (report.py)
    visplay status RUN_DIR                    where a (possibly running) run stands             (status.py)

Settings live in one config tree (`visplay.config.Config`): every subcommand that builds a config
(`pretrain`, `eval`, `self-train`, `evolve`, `serve`) takes `--preset NAME|PATH` (alias `--config
FILE.yaml`) and `--set key=value`; its other flags are shorthands for config keys, and a flag that
does not apply is an error. `report` and `status` read a run's own config (its manifest). `visplay --version` prints the version.
Errors in input (missing model, bad preset key) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from visplay import __version__
from visplay.cli import eval as eval_cmd
from visplay.cli import evolve, pretrain, report, self_train, serve, status
from visplay.config import ConfigError
from visplay.eval.judge import JudgeError
from visplay.run.rundir import RunError
from visplay.io import WriteError
from visplay.sampling.openai import SamplerError
from visplay.models import denormals_flushed

#: The subcommands, in the order `visplay --help` lists them; each module has add_parser(sub) and run(args).
SUBCOMMANDS = (pretrain, eval_cmd, self_train, evolve, serve, report, status)
#: Errors that are the user's input or environment: one line, exit status 2.
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, RunError, SamplerError, WriteError, JudgeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visplay", description="Self-evolving vision-language models from unlabeled images.")
    parser.add_argument("--version", action="version", version=f"visplay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with denormals_flushed():
            return args.func(args)
    except USER_ERRORS as e:
        print(f"visplay {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"visplay {args.command}: interrupted", file=sys.stderr)
        return 130
