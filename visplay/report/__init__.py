"""The HTML report of a run directory: `write_report(run_dir, out=None) -> Path`.

    data.py       read manifest.json, metrics.jsonl, summaries and parquet files (tolerates a crashed run)
    plots.py      matplotlib (Agg) figures as base64 PNG data URIs
    html.py       the page, its sections and `write_report` (the subcommand: `visplay/cli/report.py`)

Importing this package is cheap (no torch, matplotlib only when a plot is drawn), so the loop can
call `write_report` after each iteration. Run: `visplay report RUN_DIR`; see docs/report.md.
Test: `pytest -q tests/test_report.py`.
"""

from visplay.report.html import build_report, write_report

__all__ = ["build_report", "write_report"]
