"""`visplay status RUN_DIR`: where a (possibly running) run stands; reads, never writes."""

from __future__ import annotations

import argparse

from visplay.cli.common import add_run_dir_parser
from visplay.status import status_text


def add_parser(sub) -> None:
    add_run_dir_parser(sub, "status", run, "Read-only.")


def run(args: argparse.Namespace) -> int:
    """Print where a run stands: stages done, the stage in progress, last metrics line, lock holder."""
    print(status_text(args.run_dir))
    return 0
