"""`visplay report RUN_DIR`: one self-contained HTML page about a run (finished, crashed or running)."""

from __future__ import annotations

import argparse

from visplay.cli.common import add_run_dir_parser
from visplay.report import write_report


def add_parser(sub) -> None:
    p = add_run_dir_parser(sub, "report", run, "Works on a finished, crashed or running run.")
    p.add_argument("--out", help="output HTML file (default: RUN_DIR/report.html)")


def run(args: argparse.Namespace) -> int:
    """Write a self-contained HTML report of a run: accuracy, rewards, labels, sample questions, config."""
    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0
