"""The run directory: a manifest that is the single source of truth, a lock, metrics.jsonl.

    runs/<name>/manifest.json   config, command, and each stage's state ("done" + outputs)
    runs/<name>/lock            held (flock) by the one `evolve` process writing this run
    runs/<name>/metrics.jsonl   one JSON object per logged step/stage
    runs/<name>/iter<t>/…       stage outputs (parquet, HF model dirs, eval summaries)

A stage's outputs and its metrics records are written first (atomically, durably), then the
manifest marks it done: a crash between the two only repeats that stage. Marking a stage done
records its output files (``<stage>`` and ``<stage>.parquet``, with sizes) and stores model paths
inside the run relative to the run root, so a copied or moved run resumes with its own models; a
done stage whose outputs are since missing, resized or unreadable is not done (`output_problem`),
so ``--resume`` runs it again instead of failing on its missing file forever. Before a stage runs (or
re-runs after a crash), metrics records left by an unfinished attempt of it are dropped, so every
finished stage's records appear exactly once. A metrics line torn by a kill is skipped by readers
and never glued onto. The lock is taken before anything is created or changed, so two processes
can never write one run; the kernel releases it when its holder dies, however it dies.
Test: `pytest tests/test_evolve.py tests/test_reliability.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from visplay.eval.store import AppendLog
from visplay.run.stages import BY_KIND, checkpoint_dir, iteration_folder, parse_stage, split_stage, stage_names
from visplay.io import WriteError, atomic_write_json, atomic_write_text, stale_temps


class RunError(RuntimeError):
    pass


#: The libraries whose versions a run (and the GPU benchmark) records: what decides its numbers.
LIBRARIES = ("visplay", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm")


def library_versions(packages=LIBRARIES) -> dict[str, str | None]:
    """{package: installed version, or None}."""
    import importlib.metadata

    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def software() -> dict:
    """Library versions and the repository's git commit, recorded in the manifest of a new run."""
    import subprocess

    versions = library_versions()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "git_commit": commit}


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fd: int | None = None
        self._metrics = AppendLog(self.root / "metrics.jsonl")

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # -- where each stage's files live (the only place that spells them; kinds in run.stages) --

    def iter_dir(self, t: int) -> Path:
        return self.root / iteration_folder(t)

    def output(self, stage: str) -> Path:
        """What ``stage`` writes: ``iter<t>/questioner`` (model folder), ``iter<t>/questions.parquet``, …"""
        t, kind = parse_stage(stage)
        return self.iter_dir(t) / BY_KIND[kind].output

    def parts(self, stage: str) -> Path:
        """The durable chunk parts of a chunked stage (merged into its parquet, then removed)."""
        return self.root / f"{stage}.parts"

    def checkpoints(self, stage: str) -> Path:
        """The Trainer checkpoints of a GRPO stage (removed once its model is saved)."""
        return checkpoint_dir(self.output(stage))

    @property
    def survey_path(self) -> Path:
        """The label-free curriculum's survey of the pool (`visplay.evolve.curriculum`), written once."""
        return self.root / "survey.parquet"

    def member_output(self, stage: str, member: int) -> Path:
        """Where committee member ``member`` of reasoner ``stage`` is saved: the stage's output for
        member 0 (the reasoner), ``committee<i>`` beside it for the others."""
        out = self.output(stage)
        return out if member == 0 else out.with_name(f"committee{member}")

    def log_path(self, stage: str, what: str) -> Path:
        """A stage's side log: ``<stage>.server.log``, ``<stage>.worker.log``, ``<stage>.shard0.log``."""
        return self.root / f"{stage}.{what}.log"

    def tb_dir(self, stage: str) -> Path:
        return self.root / "tb" / stage.replace("/", "-")

    def create(self, config: dict, command: list[str]) -> None:
        if self.exists():
            raise RunError(f"run {self.root} already exists: pass --resume to continue it, or choose another --run")
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_manifest({"version": 1, "config": config, "command": command, "created": time.time(),
                             "software": software(), "stages": {}})

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
        """Marked done and its recorded outputs are all still there, whole and readable."""
        info = self.manifest()["stages"].get(stage, {})
        return marked_done(info) and output_problem(self.root, info) is None

    def output_problem(self, stage: str) -> str | None:
        """Why a stage marked done must run again (an output missing, resized or unreadable), else None."""
        info = self.manifest()["stages"].get(stage, {})
        return output_problem(self.root, info) if marked_done(info) else None

    def stage_info(self, stage: str) -> dict:
        """The stage's manifest entry, run-relative paths resolved against this run's root."""
        info = dict(self.manifest()["stages"].get(stage, {}))
        for key in info.get("run_paths", []):
            if isinstance(info.get(key), str):
                info[key] = str(self.root / info[key])
            elif isinstance(info.get(key), list):  # an absolute entry (outside the run) stays as it is
                info[key] = [str(self.root / v) for v in info[key]]
        return info

    def mark(self, stage: str, state: str, **info: Any) -> None:
        m = self.manifest()
        if state == "done":
            info = {**info, **self._portable(info), "outputs": self._outputs(stage, info)}
        m["stages"][stage] = {"state": state, "time": time.time(), **info}
        self.write_manifest(m)

    def _portable(self, info: dict) -> dict:
        """Model paths inside the run, made relative to its root (listed in ``run_paths``)."""
        root = self.root.resolve()
        out: dict[str, Any] = {}
        def portable(value: str) -> str:
            path = Path(value).resolve()
            return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

        for key in PATH_KEYS:
            value = info.get(key)
            if isinstance(value, str) and Path(value).resolve().is_relative_to(root):
                out[key] = portable(value)
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                out[key] = [portable(v) for v in value]
        return {**out, "run_paths": sorted(out)} if out else {}

    def _outputs(self, stage: str, info: dict) -> dict[str, int]:
        """{run-relative file: size} of what the stage wrote: ``<stage>`` (file or folder),
        ``<stage>.parquet`` and its model folder."""
        root = self.root.resolve()
        places = [root / stage, root / f"{stage}.parquet"]
        models = [info.get("model"), *(info.get("committee") or [])]  # co-evolved members are outputs too
        places += [Path(m).resolve() for m in models if isinstance(m, str) and Path(m).resolve().is_relative_to(root)]
        files: dict[str, int] = {}
        for place in places:
            found = sorted(p for p in place.rglob("*") if p.is_file()) if place.is_dir() else [place]
            for p in (p for p in found if p.is_file()):
                files[p.relative_to(root).as_posix()] = p.stat().st_size
        return files

    def log(self, record: dict) -> None:
        """Append one metrics record durably (a torn earlier line is never glued onto)."""
        record = json.loads(json.dumps({"time": time.time(), **record}, default=float))  # numpy scalars -> numbers
        try:
            self._metrics.append([record])
        except OSError as e:
            raise WriteError(self._metrics.path, e) from e

    def metrics(self) -> list[dict]:
        """Every complete metrics record, in order."""
        return list(self._metrics.read())

    def drop_metrics(self, stage: str) -> int:
        """Remove the records of ``stage`` (an unfinished attempt's); returns how many were dropped."""
        if not self._metrics.path.exists():
            return 0
        records = self.metrics()
        keep = [r for r in records if r.get("stage") != stage]
        raw = self._metrics.path.read_bytes()
        torn = bool(raw) and not raw.endswith(b"\n")
        if len(keep) == len(records) and not torn:
            return 0
        atomic_write_text(self._metrics.path,
                          "".join(json.dumps(r, default=float) + "\n" for r in keep))
        return len(records) - len(keep)

    def clean_temps(self) -> list[Path]:
        """Delete temp files/folders a killed writer left in the run (only while holding the lock)."""
        if self._lock_fd is None:
            raise RunError("clean_temps needs the run lock")
        found = stale_temps(self.root)
        for path in found:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return found

    def lock(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"cannot write the run directory {self.root}: {e.strerror or e} "
                           "(choose a writable --run)") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise RunError(f"run {self.root} is in use by another visplay process (lock held)") from e
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:  # a full disk: say which file, not a traceback
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise WriteError(self.root / "lock", e) from e
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


#: Stage-info keys that hold paths; kept relative to the run root when they point inside it.
PATH_KEYS = ("model", "committee")


def output_problem(root: str | Path, info: dict) -> str | None:
    """The first recorded output of a done stage that is missing, resized or unreadable, else None.

    Entries without ``outputs`` (runs made before outputs were recorded) are trusted as they are.
    """
    root = Path(root)
    for rel, size in (info.get("outputs") or {}).items():
        path = root / rel
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                return f"{rel} is no longer a file"
            if st.st_size != size:
                return f"{rel} has {st.st_size:,} bytes, {size:,} when it was written"
            with open(path, "rb") as f:
                f.read(1)
            if path.suffix == ".parquet":
                pq.read_metadata(path)
        except FileNotFoundError:
            return f"{rel} is missing"
        except Exception as e:  # noqa: BLE001 -- OSError, or pyarrow on a damaged footer
            return f"{rel} is unreadable ({type(e).__name__}: {e})"
    return None


# -- "done": the one decision, read by the loop, `visplay status` and the report --------------------


def marked_done(info: dict) -> bool:
    """A stage's manifest entry says it finished (whether its outputs are still whole: `output_problem`)."""
    return info.get("state") == "done"


def is_done(manifest: dict, stage: str) -> bool:
    """``stage`` is marked done in ``manifest`` (a manifest dict, as `visplay status` reads it)."""
    return marked_done(manifest["stages"].get(stage, {}))


def iterations(manifest: dict) -> int:
    """Planned iterations: config evolve.iterations, else the highest iteration seen in the stages."""
    n = (manifest.get("config") or {}).get("evolve", {}).get("iterations")
    seen = [split[0] for s in manifest.get("stages", {}) if (split := split_stage(s))]
    return max([n if isinstance(n, int) else 0, *seen])


def expected_stages(manifest: dict) -> list[str]:
    """Every stage the finished run will have, in the loop's order."""
    return stage_names(iterations(manifest))


def next_stage(manifest: dict) -> str | None:
    """The stage in progress (or where a stopped run resumes): the first expected stage not done."""
    return next((s for s in expected_stages(manifest) if not is_done(manifest, s)), None)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM (``kill``, a scheduler's preemption) stops like Ctrl-C: a
    KeyboardInterrupt unwinds cleanly (temp files removed, lock released, resume hint printed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
