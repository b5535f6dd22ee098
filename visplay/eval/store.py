"""Append-only JSON-lines logs: the generation store and the judge cache of a benchmark evaluation.

Each record is one line, written whole and flushed (and fsynced on close) before it counts. A crash
can leave at most a torn last line: reading skips lines that are not complete JSON objects, and
the next append starts on a fresh line, so earlier records are never lost or rewritten. Nothing
here truncates or deletes a file. Safe for threads of one process (a lock around each append).
Test: ``pytest -q tests/test_judge.py -k cache``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


class AppendLog:
    """An append-only ``.jsonl`` file of dict records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> Iterator[dict]:
        """Every complete record, in file order; torn or foreign lines are skipped."""
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    return  # a torn last line from an interrupted write
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(record, dict):
                    yield record

    def append(self, records: Iterable[dict]) -> int:
        """Append ``records`` (one line each) durably; returns how many were written."""
        lines = [json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) + "\n" for r in records]
        if not lines:
            return 0
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as f:
                if f.tell() > 0 and not _ends_with_newline(self.path):
                    f.write(b"\n")  # never glue a record onto a torn line
                f.write("".join(lines).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        return len(lines)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
