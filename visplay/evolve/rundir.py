"""The run directory: a manifest that is the single source of truth, a lock, metrics.jsonl.

    runs/<name>/manifest.json   config, command, and each stage's state ("done" + outputs)
    runs/<name>/lock            held (flock) by the one `evolve` process writing this run
    runs/<name>/metrics.jsonl   one JSON object per logged step/stage, append-only
    runs/<name>/iter<t>/…       stage outputs (parquet, HF model dirs, eval summaries)

A stage's outputs are written first (atomically), then the manifest marks it done: a crash
between the two only repeats that stage. Test: `pytest tests/test_evolve.py`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from visplay.io import atomic_write_json


class RunError(RuntimeError):
    pass


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fd: int | None = None

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def create(self, config: dict, command: list[str]) -> None:
        if self.exists():
            raise RunError(f"run {self.root} already exists: pass --resume to continue it, or choose another --run")
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_manifest({"version": 1, "config": config, "command": command, "created": time.time(), "stages": {}})

    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError as e:
            raise RunError(f"no run at {self.root} (manifest.json missing): start one without --resume") from e
        except json.JSONDecodeError as e:
            raise RunError(f"{self.manifest_path} is corrupt: {e}") from e

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def is_done(self, stage: str) -> bool:
        return self.manifest()["stages"].get(stage, {}).get("state") == "done"

    def stage_info(self, stage: str) -> dict:
        return self.manifest()["stages"].get(stage, {})

    def mark(self, stage: str, state: str, **info: Any) -> None:
        m = self.manifest()
        m["stages"][stage] = {"state": state, "time": time.time(), **info}
        self.write_manifest(m)

    def log(self, record: dict) -> None:
        """Append one metrics record (a line is written whole by one write call)."""
        line = json.dumps({"time": time.time(), **record}, default=float) + "\n"
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise RunError(f"run {self.root} is in use by another visplay process (lock held)") from e
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "RunDir":
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()
