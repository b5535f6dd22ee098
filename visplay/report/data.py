"""Everything the report shows, read from a run directory into plain Python, tolerating a crash.

A run that stopped mid-way has stages missing from the manifest and files missing on disk; a torn
last line in metrics.jsonl or an unreadable parquet file is recorded in ``Run.problems`` and the
rest still loads. Nothing here draws or formats (see plots.py and html.py), nothing is written.
Parquet files are read column by column: image bytes only for the few gallery rows.
Test: `pytest -q tests/test_report.py`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from visplay.run.stages import stage_name
from visplay.io import image_bytes
from visplay.run.rundir import RunDir, expected_stages, is_done, iterations, next_stage
from visplay.status import LockState, lock_state, read_manifest
from visplay.worlds.scene import COLOURS

#: Columns of questions.parquet / labels.parquet the report uses (samples and image bytes excluded).
ROW_COLUMNS = ("image_id", "origin", "raw", "valid", "reason", "qtype", "question", "questioner_answer",
               "true_answer", "label", "count", "answered", "agreement", "kept", "label_correct",
               "questioner_correct", "skip_reason")
GALLERY_SIZE = 8


@dataclass
class Iteration:
    t: int
    eval: dict | None = None  # iter<t>/eval/summary.json
    bench: dict | None = None  # iter<t>/bench/summary.json (optional benchmark evaluation)
    questions: list[dict] | None = None  # iter<t>/questions.parquet rows, no image bytes
    labels: list[dict] | None = None  # iter<t>/labels.parquet rows, no image bytes or samples
    gallery: list[dict] = field(default_factory=list)  # a few rows with their image_png bytes


@dataclass
class Run:
    root: Path
    manifest: dict
    lock: LockState
    metrics: list[dict]
    iterations: dict[int, Iteration]
    problems: list[str]
    _steps: dict | None = field(default=None, repr=False)

    @property
    def config(self) -> dict:
        return self.manifest.get("config") or {}

    @property
    def evolve(self) -> dict:
        return self.config.get("evolve") or {}

    @property
    def stages(self) -> dict:
        return self.manifest["stages"]

    @property
    def expected(self) -> list[str]:
        return expected_stages(self.manifest)

    @property
    def current(self) -> str | None:
        return next_stage(self.manifest)

    @property
    def state(self) -> str:
        """finished | running | stopped."""
        if self.current is None:
            return "finished"
        return "running" if self.lock.held else "stopped"

    def done(self, stage: str) -> bool:
        return is_done(self.manifest, stage)

    def info(self, stage: str) -> dict:
        return self.stages.get(stage, {}) if self.done(stage) else {}

    def phases(self, kind: str) -> list[tuple[int, str]]:
        """(t, the stage ``kind`` of iteration t) for every iteration t >= 1 of the run."""
        return [(t, stage_name(t, kind)) for t in self.iterations if t]

    def steps(self, stage: str) -> list[dict]:
        """GRPO step logs of ``stage`` (lines with a reward), one per step: a repeated step keeps its last line."""
        if self._steps is None:  # one pass over metrics.jsonl for every stage, not one per call
            by_stage: dict = {}
            for r in self.metrics:
                if "reward" in r and "step" in r:
                    by_stage.setdefault(r.get("stage"), {})[r["step"]] = r
            self._steps = {st: [rows[k] for k in sorted(rows)] for st, rows in by_stage.items()}
        return self._steps.get(stage, [])


def _read_json(path: Path, problems: list[str], required: bool) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            problems.append(f"{path.name} missing: {path}")
        return None
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"unreadable {path}: {e}")
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path, problems: list[str]) -> list[dict]:
    records: list[dict] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return records
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(r, dict):
            records.append(r)
    if bad:
        problems.append(f"metrics.jsonl: {bad} unparseable line(s) skipped (a torn last line after a crash?)")
    return records


def _read_rows(path: Path, problems: list[str]) -> list[dict] | None:
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        names = set(pq.read_schema(path).names)
        return pq.read_table(path, columns=[c for c in ROW_COLUMNS if c in names]).to_pylist()
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, never fatal
        problems.append(f"unreadable {path}: {e}")
        return None


def pick_gallery(rows: list[dict], size: int = GALLERY_SIZE) -> list[int]:
    """Row indices to show: mostly kept questions, some outside the band, some invalid; spread out.

    >>> pick_gallery([{"valid": True, "label": "1", "kept": True}] * 3 + [{"valid": False}] * 3, 4)
    [0, 1, 3, 4]
    """
    kept = [i for i, r in enumerate(rows) if r.get("kept")]
    outside = [i for i, r in enumerate(rows) if r.get("valid") and not r.get("kept") and r.get("label") is not None]
    other = [i for i, r in enumerate(rows) if i not in set(kept) | set(outside)]

    def spread(ix: list[int], k: int) -> list[int]:
        return ix if len(ix) <= k else [ix[j * len(ix) // k] for j in range(k)]

    quota = {"kept": size // 2, "outside": size // 4}
    picked = spread(kept, quota["kept"]) + spread(outside, quota["outside"])
    picked += spread(other, size - len(picked))
    for pool in (kept, outside, other):  # fill up from whatever is left
        picked += [i for i in pool if i not in picked][: size - len(picked)]
    return sorted(picked)


def _gallery(path: Path, rows: list[dict], problems: list[str]) -> list[dict]:
    import pyarrow.parquet as pq

    idx = pick_gallery(rows)
    if not idx:
        return []
    try:
        images = pq.read_table(path, columns=["image_png"]).column(0).take(idx).to_pylist()
    except Exception as e:  # noqa: BLE001
        problems.append(f"images of {path}: {e}")
        images = [None] * len(idx)
    return [{**rows[i], "image_png": image_bytes(img), "row": i} for i, img in zip(idx, images)]


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; raises StatusError only when there is no readable manifest."""
    root = Path(run_dir)
    run = RunDir(root)
    manifest = read_manifest(root)
    problems: list[str] = []
    metrics = read_metrics(root / "metrics.jsonl", problems)
    its: dict[int, Iteration] = {}
    for t in range(iterations(manifest) + 1):
        it = Iteration(t)
        eval_dir = run.output(stage_name(t, "eval"))
        it.eval = _read_json(eval_dir / "summary.json", problems, is_done(manifest, stage_name(t, "eval")))
        it.bench = _read_json(run.iter_dir(t) / "bench" / "summary.json", problems, False)
        if t > 0:
            questions, labels = run.output(stage_name(t, "questions")), run.output(stage_name(t, "labels"))
            it.questions = _read_rows(questions, problems)
            it.labels = _read_rows(labels, problems)
            for path, rows in ((questions, it.questions), (labels, it.labels)):
                name = path.stem
                if rows is None and is_done(manifest, stage_name(t, name)):
                    problems.append(f"{stage_name(t, name)} is marked done but {path.name} is missing or unreadable")
            source, rows = (labels, it.labels) if it.labels else (questions, it.questions)
            if rows:
                it.gallery = _gallery(source, rows, problems)
        its[t] = it
    return Run(root, manifest, lock_state(root), metrics, its, problems)


def qtype_mix(rows: list[dict]) -> Counter:
    """Valid questions per type, invalid ones counted as "invalid"."""
    return Counter((r.get("qtype") or "unknown") if r.get("valid") else "invalid" for r in rows)


_OPTION = re.compile(r"(?:^|\s)([A-H])\.\s+")


def degenerate(question: str | None) -> str | None:
    """Why a question is degenerate (the same colour named twice, or two options alike), else None.

    >>> degenerate("Are there more green objects than green objects? A. no B. yes")
    'names green twice'
    >>> degenerate("How many objects are red or red?")
    'names red twice'
    >>> degenerate("What colour is the left-most square? A. purple B. purple C. red")
    'duplicate options: purple'
    >>> degenerate("How many objects are blue or red?") is None
    True
    """
    if not question:
        return None
    parts = _OPTION.split(question)
    stem, options = parts[0], [o.strip().rstrip(".?").lower() for o in parts[2::2]]
    reasons = []
    words = re.findall(r"[a-z]+", stem.lower())
    reasons += [f"names {c} twice" for c in COLOURS if words.count(c) >= 2]
    dups = sorted({o for o in options if o and options.count(o) > 1})
    if dups:
        reasons.append("duplicate options: " + ", ".join(dups))
    return "; ".join(reasons) or None
