"""`visplay status RUN_DIR`: where a run stands, read-only, also while it runs in another terminal.

Prints the stages done (with their key numbers), stages marked done whose outputs have since gone
missing or been damaged ("redo": `--resume` runs them again), the stage in progress (the first one not done),
how far that stage has got (parts written, last GRPO checkpoint), the last line of metrics.jsonl,
and whether RUN/lock is held by a live `visplay evolve` process. The lock is probed with a
non-blocking shared `flock` on a read-only descriptor and released at once; nothing in the run
directory is created or written. Stage order and "done" come from the run floor (`visplay.run`);
the helpers here (lock probe, number format) are shared with the HTML report (`visplay/report/`),
so both say the same thing in the same format.

Run: `visplay status runs/tiny-20250101-120000`; test: `pytest -q tests/test_status.py`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from visplay.run.rundir import RunDir, expected_stages, is_done, iterations, output_problem
from visplay.run.stages import BY_KIND, CHUNKED_STAGES, MODEL_STAGES, split_stage, stage_name

#: Keys of a metrics line shown first by `status` (the rest are counted, not printed).
_HEADLINE_KEYS = ("step", "reward", "questioner/uncertainty", "questioner/diversity_penalty", "questioner/valid",
                  "reasoner/accuracy", "reasoner/format", "loss", "kl", "completions/mean_length",
                  "greedy", "maj", "pass", "n", "rows", "valid", "n_labeled", "n_kept", "label_accuracy_kept",
                  "train_rows", "seconds")


class StatusError(ValueError):
    """The directory is not a run (no readable manifest.json)."""


def fmt(value) -> str:
    """The one number format of status and report: floats with 3 decimals, None as an en dash.

    >>> fmt(0.1234567), fmt(3), fmt(None), fmt(True), fmt(float("nan"))
    ('0.123', '3', '–', 'yes', 'nan')
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def duration(seconds: float) -> str:
    """`42s`, `3m 05s`, `2h 07m`."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def read_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise StatusError(f"{run_dir} is not a run directory (no manifest.json); "
                          "runs are made by `visplay evolve`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise StatusError(f"{path} is unreadable: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict):
        raise StatusError(f"{path} is not a visplay manifest (no 'stages' mapping)")
    manifest.setdefault("stages", {})
    return manifest


@dataclass(frozen=True)
class LockState:
    exists: bool
    held: bool
    pid: int | None  # the pid the holder wrote into the file (the last holder's when free)

    def describe(self) -> str:
        if not self.exists:
            return "no lock file (no `visplay evolve` has opened this run)"
        if self.held:
            return f"lock held by pid {self.pid}" if self.pid else "lock held"
        return "lock free" + (f" (last holder pid {self.pid} is gone)" if self.pid else "")


def lock_state(run_dir: str | Path) -> LockState:
    """Probe RUN/lock with a non-blocking shared flock, released immediately; never creates the file."""
    path = Path(run_dir) / "lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return LockState(False, False, None)
    try:
        raw = os.read(fd, 32).decode(errors="replace").strip()
        pid = int(raw) if raw.isdigit() else None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockState(True, True, pid)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return LockState(True, False, pid)
    finally:
        os.close(fd)


def last_metrics(run_dir: str | Path, max_bytes: int = 1 << 20) -> tuple[dict | None, int]:
    """The last parseable line of metrics.jsonl (a torn last line is passed over) and the line count."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        data = path.read_bytes() if path.stat().st_size <= max_bytes else _tail(path, max_bytes)
        count = _count_lines(path)
    except FileNotFoundError:
        return None, 0
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            return record, count
    return None, count


def _tail(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(-n, os.SEEK_END)
        return f.read()


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def metrics_summary(record: dict, limit: int = 10) -> str:
    """`stage step 3: reward -0.250, loss 0.012, … (+24 more keys)` for one metrics line."""
    keys = [k for k in _HEADLINE_KEYS if k in record and k != "step"]
    rest = [k for k in record if k not in ("time", "stage", "step") and k not in keys]
    shown = (keys + rest)[:limit]
    head = f"{record.get('stage', '?')}" + (f" step {record['step']}" if "step" in record else "")
    body = ", ".join(f"{k} {fmt(record[k])}" for k in shown)
    more = len(keys) + len(rest) - len(shown)
    return f"{head}: {body}" + (f" (+{more} more keys)" if more > 0 else "")


def stage_summary(stage: str, info: dict) -> str:
    """The few numbers that say what a done stage produced."""
    kind = stage.split("/")[-1]
    if kind == "eval":
        return "  ".join(f"{k} {fmt(info.get(k))}" for k in ("greedy", "maj", "pass", "n"))
    if kind == "questions":
        return f"{fmt(info.get('valid'))}/{fmt(info.get('rows'))} questions valid"
    if kind == "labels":
        return (f"kept {fmt(info.get('n_kept'))}/{fmt(info.get('n_labeled'))} labeled, label accuracy "
                f"{fmt(info.get('label_accuracy'))} (kept {fmt(info.get('label_accuracy_kept'))})")
    if kind == "reasoner":
        return f"trained on {fmt(info.get('train_rows'))} rows" + (f" — {info['skipped']}" if info.get("skipped") else "")
    if kind == "questioner":
        return info["skipped"] if info.get("skipped") else f"{fmt(info.get('images'))} images"
    return ""


def stage_progress(run_dir: str | Path, manifest: dict, stage: str) -> str | None:
    """How far a stage that is not done has got, from the files it has written so far."""
    run = RunDir(run_dir)
    t, kind = split_stage(stage) or (None, None)
    ev = (manifest.get("config") or {}).get("evolve", {})
    if kind not in BY_KIND:
        return None
    if kind in MODEL_STAGES:
        ckpts = [d for d in run.checkpoints(stage).glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
        steps = (ev.get(kind) or {}).get("steps")
        if not ckpts:
            return f"GRPO: no checkpoint yet (of {steps} steps)" if steps else None
        step = max(int(d.name.split("-")[1]) for d in ckpts if d.name.split("-")[1].isdigit())
        return f"GRPO: last checkpoint at step {step}" + (f" of {steps}" if steps else "")
    if kind in CHUNKED_STAGES:
        parts = len(list(run.parts(stage).glob("*.parquet")))
        size = ev.get("chunk_size")
        n = ev.get("images_per_iteration")
        if kind == "labels":  # one label per question row
            n = manifest["stages"].get(stage_name(t, "questions"), {}).get("rows")
        total = math.ceil(n / size) if isinstance(n, int) and isinstance(size, int) and size > 0 else None
        where = run.parts(stage).relative_to(run.root)
        return f"{parts}" + (f"/{total}" if total else "") + f" chunks written to {where}"
    return None


def status_text(run_dir: str | Path, now: float | None = None) -> str:
    """The status of the run in ``run_dir`` as text (what `visplay status` prints)."""
    root = Path(run_dir)
    manifest = read_manifest(root)
    now = time.time() if now is None else now
    lock = lock_state(root)
    stages = manifest["stages"]
    expected = expected_stages(manifest)
    # marked done, but an output is missing or damaged since: `--resume` runs these again
    broken = {s: p for s in expected if is_done(manifest, s) and (p := output_problem(root, stages[s]))}
    done = [s for s in expected if is_done(manifest, s) and s not in broken]
    current = next((s for s in expected if s not in done), None)
    command = manifest.get("command") or []
    created = manifest.get("created")
    lines = [f"run: {root}"]
    if isinstance(created, (int, float)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        lines.append(f"created: {stamp} ({duration(now - created)} ago)")
    lines.append("command: " + (shlex.join(map(str, command)) if command else "(not recorded)"))

    last_time = max([i.get("time", 0) for i in stages.values() if isinstance(i, dict)] + [created or 0])
    if current is None:
        n = iterations(manifest)
        state = f"finished: all {len(expected)} stages done ({n} iteration{'' if n == 1 else 's'})"
    elif lock.held:
        state = f"in progress: {current} (running for {duration(now - last_time)}; {lock.describe()})"
    elif current in broken:
        state = (f"{current} must run again: {broken[current]} ({lock.describe()}); "
                 f"resume: visplay evolve --run {shlex.quote(str(root))} --resume")
    else:
        state = (f"stopped before {current} ({lock.describe()}: crashed or interrupted); "
                 f"resume: visplay evolve --run {shlex.quote(str(root))} --resume")
    lines.append(f"state: {state}")

    lines.append(f"stages ({len(done)}/{len(expected)} done):")
    width = max(len(s) for s in expected)
    for s in expected:
        info = stages.get(s, {})
        if s in broken:
            lines.append(f"  redo     {s:<{width}}  outputs damaged: {broken[s]}; --resume runs it again")
        elif is_done(manifest, s):
            secs = info.get("seconds")
            lines.append(f"  done     {s:<{width}}  {duration(secs) if isinstance(secs, (int, float)) else '':>7}  "
                         f"{stage_summary(s, info)}".rstrip())
        elif s == current:
            word = "running" if lock.held else "stopped"
            progress = stage_progress(root, manifest, s)
            lines.append(f"  {word:<8} {s:<{width}}" + (f"           {progress}" if progress else ""))
        else:
            lines.append(f"  pending  {s}")
    extra = sorted(set(stages) - set(expected))
    for s in extra:
        lines.append(f"  {stages[s].get('state', '?'):<8} {s}  (not in the planned stages)")

    record, count = last_metrics(root)
    if record is None:
        lines.append("last metrics: none yet (metrics.jsonl " + ("empty)" if count else "missing)"))
    else:
        when = record.get("time")
        age = f", {duration(now - when)} ago" if isinstance(when, (int, float)) else ""
        lines.append(f"last metrics (line {count}{age}): {metrics_summary(record)}")
    return "\n".join(lines)
