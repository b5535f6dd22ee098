"""Fault injection for `visplay evolve`: kill it anywhere, resume, and prove nothing was lost.

The harness is black-box. It starts ``python -m visplay.cli evolve`` as a subprocess on a tiny
fast config (`fast_overrides`: the shipped tiny model, one iteration, a handful of images, two
GRPO steps with a checkpoint after each) and watches the run directory to know where the run is:
which stages the manifest marks done, which chunk parts exist, which GRPO checkpoints exist, when
a model folder is being saved. A `KillPoint` says when to strike:

    KillPoint("iter1/questioner", "checkpoint", 1)         once checkpoint-1 is complete
    KillPoint("iter1/questioner", "checkpoint-partial", 2)  while checkpoint-2 is half written
    KillPoint("iter1/questions", "part", 1)                 once the first chunk part exists
    KillPoint("iter1/reasoner", "saving")                   while the final model folder is written
    KillPoint("iter1/labels", "frac", 0.5)                  half-way through (by the reference timing)
    KillPoint("iter1/labels", "done")                       right after the manifest marks it done
    KillPoint(..., sig=signal.SIGINT)                       Ctrl-C (to the process group) instead

After each kill `check_invariants` looks at the run directory as a crash left it (manifest reads,
every stage marked done has complete outputs, the lock is free, the killed process's children
are gone), then the run is resumed; the next kill point of a chain strikes the resumed process.
When the chain is done the run is resumed to the end and `compare` checks it against an uncrashed
reference run: the same stages, every stage output with exactly the reference's rows by key
(image id and sample for questions and labels, item id and question for evaluations: sampled
text after a resume need not be bitwise identical), each GRPO step logged exactly once, every
model folder loads, no temp files or checkpoints left behind.

Used by `tests/test_faults.py` (a few kill points, CI) and `scripts/kill_sweep.py` (the sweep,
docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visplay.run.stages import CHUNKED_STAGES, MODEL_STAGES, stage_names
from visplay.run.rundir import RunDir

__all__ = ["CHUNKED_STAGES", "MODEL_STAGES", "stage_names"]  # read by the kill sweep and tests

REPO = Path(__file__).resolve().parents[1]
POLL = 0.01  # seconds between looks at the run directory
CLEAN_STOP_CODES = (130, -signal.SIGINT)  # exit statuses of a Ctrl-C'd run that stopped cleanly


#: The default preset turned back into VisPlay's own loop: one model, answer vote, reasoner GRPO (put
#: it first; the model is the caller's). The machinery tests (faults, report, status, sources, LoRA,
#: shards) run it; the preset's committee ladder has its own tests (tests/test_committee.py).
VISPLAY_LOOP = [
    "evolve.committee=[]", "evolve.agreement=answer", "evolve.reasoner_objective=grpo",
    "evolve.coevolve=false", "evolve.replay_images=0", "evolve.survey_images=0", "evolve.max_new_tokens=64",
    "eval.max_new_tokens=64",
]


def fast_overrides(model: str = "tiny") -> list[str]:
    """A full loop in ~30 s on 2 CPU cores that still exercises everything a crash can hit:
    valid questions (the shipped tiny model writes them), several chunk parts per stage, a
    checkpoint after every GRPO step, reasoner training on kept labels, two evaluations."""
    return VISPLAY_LOOP + [
        f"model={model}", "evolve.iterations=1", "evolve.questioner_images=2", "evolve.images_per_iteration=6",
        "evolve.chunk_size=2", "evolve.reward_samples=2", "evolve.label_samples=3", "evolve.band_low=0",
        "evolve.band_high=1", "evolve.questioner.steps=2", "evolve.questioner.save_steps=1",
        "evolve.questioner.prompts_per_step=2", "evolve.questioner.num_generations=2",
        "evolve.reasoner.steps=2", "evolve.reasoner.save_steps=1", "evolve.reasoner.prompts_per_step=2",
        "evolve.reasoner.num_generations=2", "eval.n=24", "eval.k=2", "evolve.report_to=[]",
        "evolve.grader_workers=1", "evolve.grader_timeout=5", "evolve.max_new_tokens=32",
        "evolve.questioner.max_completion_length=32", "evolve.reasoner.max_completion_length=32",
        "eval.max_new_tokens=32",
    ]


# ---------------------------------------------------------------- looking at a run directory


def read_manifest(run: Path) -> dict | None:
    try:
        return json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def done_stages(run: Path) -> set[str]:
    m = read_manifest(run) or {}
    return {s for s, info in m.get("stages", {}).items() if info.get("state") == "done"}


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc; empty where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def lock_held(run: Path) -> bool:
    from visplay.status import lock_state

    return lock_state(run).held


# ---------------------------------------------------------------- kill points


@dataclass(frozen=True)
class KillPoint:
    """When to send ``sig`` to a running `visplay evolve` (see the module docstring)."""

    stage: str
    at: str  # "done", "frac", "part", "checkpoint", "checkpoint-partial", "saving"
    value: float = 0.0
    sig: int = signal.SIGKILL

    def __post_init__(self) -> None:
        kinds = ("done", "frac", "part", "checkpoint", "checkpoint-partial", "saving")
        if self.at not in kinds:
            raise ValueError(f"KillPoint.at must be one of {kinds}, got {self.at!r}")
        name = self.stage.split("/")[-1]
        if self.at == "part" and name not in CHUNKED_STAGES:
            raise ValueError(f"{self.stage} writes no chunk parts")
        if self.at in ("checkpoint", "checkpoint-partial", "saving") and name not in MODEL_STAGES:
            raise ValueError(f"{self.stage} is not a GRPO phase")

    @property
    def label(self) -> str:
        value = f":{self.value:g}" if self.at in ("frac", "part", "checkpoint", "checkpoint-partial") else ""
        return f"{signal.Signals(self.sig).name} {self.stage} {self.at}{value}"

    def reached(self, run: Path, seen: dict[str, float], now: float, timeline: "Timeline | None") -> bool:
        """Whether the run (whose stage-done times so far are ``seen``) has got to this point."""
        rd = RunDir(run)
        # An event the polling missed (a save faster than POLL) still fires once the stage is done,
        # so a chain never waits for it forever; `KillResult.landed` says where the kill went.
        if self.at == "done" or self.stage in seen:
            return self.stage in seen
        if self.at == "part":
            return (rd.parts(self.stage) / f"{int(self.value) - 1:05d}.parquet").is_file()
        if self.at == "checkpoint":  # checkpoint-N or a later one is complete (rotation deletes older ones)
            return any(d.name[11:].isdigit() and int(d.name[11:]) >= self.value and (d / "trainer_state.json").is_file()
                       for d in rd.checkpoints(self.stage).glob("checkpoint-*"))
        if self.at == "checkpoint-partial":  # the folder exists; its trainer_state.json (written last) may not yet
            return (rd.checkpoints(self.stage) / f"checkpoint-{int(self.value)}").is_dir()
        if self.at == "saving":
            out = rd.output(self.stage)
            return out.with_name(out.name + ".tmp").is_dir()
        # "frac": the stage began when the stage before it was seen done, or when this process took
        # the run's lock (imports and checks are over), whichever came later
        if timeline is None:
            raise ValueError("a 'frac' kill point needs the reference timeline")
        before = timeline.previous(self.stage)
        if "<locked>" not in seen or (before is not None and before not in seen):
            return False
        start = max(seen[before] if before else 0.0, seen["<locked>"])
        return now >= start + self.value * timeline.duration(self.stage)


@dataclass
class Timeline:
    """When an uncrashed run saw each stage done, in seconds after its process started."""

    stages: list[str]
    done_at: dict[str, float]
    locked_at: float = 0.0

    def previous(self, stage: str) -> str | None:
        i = self.stages.index(stage)
        return self.stages[i - 1] if i else None

    def duration(self, stage: str) -> float:
        before = self.previous(stage)
        return self.done_at[stage] - max(self.done_at[before] if before else 0.0, self.locked_at)


# ---------------------------------------------------------------- running visplay evolve


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path
    started: float

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def start_evolve(run: Path, overrides: Sequence[str], resume: bool, log: Path, preset: str | None = None) -> Proc:
    """``python -m visplay.cli evolve --run RUN`` (fresh with ``preset`` + ``overrides``, or
    ``--resume``), in its own process group (so Ctrl-C can be sent to it alone), output to ``log``."""
    cmd = [sys.executable, "-m", "visplay.cli", "evolve", "--run", str(run)]
    if resume:
        cmd.append("--resume")
    else:
        cmd += ["--preset", preset] if preset else []
        for o in overrides:
            cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(cmd)}\n".encode())
        popen = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_foreground_signals)
    return Proc(popen, log, time.monotonic())


def _foreground_signals() -> None:
    """Run the child as a terminal would run it in the foreground: a harness started in the
    background (``cmd &`` in a script) passes SIGINT down as ignored, and Ctrl-C would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def watch(proc: Proc, run: Path, until: Callable[[dict[str, float], float], bool] | None,
          timeout: float) -> tuple[bool, dict[str, float]]:
    """Poll the run until ``until(seen, now)`` holds (True) or the process exits (False).

    ``seen`` maps each stage to when it was first seen done (seconds after the process started;
    ``"<start>"`` is 0, ``"<locked>"`` when the run's lock was first seen held). Raises
    TimeoutError after ``timeout`` seconds."""
    seen: dict[str, float] = {"<start>": 0.0}
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic() - proc.started
        exited = proc.popen.poll() is not None  # looked at first: a point seen after the exit was not reached
        if "<locked>" not in seen and lock_held(run):
            seen["<locked>"] = now
        for s in done_stages(run) - set(seen):
            seen[s] = now
        if exited:
            return False, seen
        if until is not None and until(seen, now):
            return True, seen
        if time.monotonic() > deadline:
            proc.popen.kill()
            proc.popen.wait()
            raise TimeoutError(f"visplay evolve on {run} ran past {timeout:.0f}s; log: {proc.log}")
        time.sleep(POLL)


def finish(proc: Proc, run: Path, timeout: float = 600) -> int:
    watch(proc, run, None, timeout)
    return proc.popen.wait()


def reference_run(run: Path, overrides: Sequence[str], log: Path, timeout: float = 600,
                  preset: str | None = None) -> Timeline:
    """An uncrashed run to compare against, and when it saw each stage done."""
    proc = start_evolve(run, overrides, resume=False, log=log, preset=preset)
    _, seen = watch(proc, run, None, timeout)
    rc = proc.popen.wait()
    if rc != 0:
        raise RuntimeError(f"the reference run failed (exit {rc}); log: {log}\n{proc.output()[-3000:]}")
    stages = sorted((s for s in seen if not s.startswith("<")), key=lambda s: seen[s])
    return Timeline(stages, {s: seen[s] for s in stages}, seen.get("<locked>", 0.0))


# ---------------------------------------------------------------- what a kill leaves, and the end result


def stage_rows(run: Path, stage: str) -> Counter | None:
    """The keys of a stage's rows (None for stages without rows, or when the file is missing)."""
    import pyarrow.parquet as pq

    name = stage.split("/")[-1]
    if name in CHUNKED_STAGES:
        path, cols = RunDir(run).output(stage), ("image_id", "sample")
    elif name == "eval":
        path, cols = RunDir(run).output(stage) / "items.parquet", ("id", "question")
    else:
        return None
    if not path.is_file():
        return None
    table = pq.read_table(path, columns=list(cols)).to_pylist()
    return Counter(tuple(r[c] for c in cols) for r in table)


def _model_loads(path: Path) -> str | None:
    """None if ``path`` holds a model that loads, else why not."""
    from visplay.models import ModelError, load_model

    try:
        load_model(path)
    except ModelError as e:
        return str(e)
    return None


def check_invariants(run: Path, final: bool = False) -> list[str]:
    """What is wrong with the run directory as it stands (a crash may have just left it)."""
    from visplay.io import stale_temps
    from visplay.models import last_checkpoint

    problems = []
    manifest = read_manifest(run)
    if manifest is None:
        return [] if not final and not (run / "manifest.json").exists() else ["manifest.json missing or unreadable"]
    if lock_held(run):
        problems.append("the lock is still held after the process ended")
    for stage, info in manifest.get("stages", {}).items():
        if info.get("state") != "done":
            continue
        name = stage.split("/")[-1]
        if name in CHUNKED_STAGES or name == "eval":
            rows = stage_rows(run, stage)
            if rows is None:
                problems.append(f"{stage} is marked done but its output is missing")
            elif name == "questions" and sum(rows.values()) != info.get("rows"):
                problems.append(f"{stage}: {sum(rows.values())} rows on disk, the manifest says {info.get('rows')}")
        if name == "eval" and not (run / stage / "summary.json").is_file():
            problems.append(f"{stage} is marked done but summary.json is missing")
        model = run / info["model"] if "model" in info.get("run_paths", []) else Path(info.get("model", ""))
        if name in MODEL_STAGES and "model" in info and model.resolve().is_relative_to(run.resolve()):
            why = _model_loads(model)
            if why:
                problems.append(f"{stage} is marked done but its model does not load: {why}")
    for ckpt_dir in run.glob("iter*/*.ckpt"):
        ckpt = last_checkpoint(ckpt_dir)
        if final:
            problems.append(f"{ckpt_dir} left behind after the run finished")
        elif ckpt is not None:
            why = _checkpoint_loads(Path(ckpt))
            if why:
                problems.append(f"{ckpt} is the checkpoint a resume would use, but it does not load: {why}")
    if final:
        problems += [f"temp file left behind: {p}" for p in stale_temps(run)]
    return problems


def _checkpoint_loads(path: Path) -> str | None:
    from transformers import AutoModelForImageTextToText

    try:
        AutoModelForImageTextToText.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        return f"{type(e).__name__}: {e}"
    return None


@dataclass
class Comparison:
    """A finished run against the uncrashed reference: rows by stage, GRPO steps, problems."""

    lost: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    foreign: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (any(self.lost.values()) or any(self.duplicated.values()) or any(self.foreign.values())
                    or self.problems)


def _grpo_steps(run: Path) -> dict[str, Counter]:
    from visplay.eval.store import AppendLog

    out: dict[str, Counter] = {}
    for r in AppendLog(run / "metrics.jsonl").read():
        if "loss" in r and "step" in r:
            out.setdefault(r.get("stage", "?"), Counter())[r["step"]] += 1
    return out


def _stage_records(run: Path) -> Counter:
    from visplay.eval.store import AppendLog

    return Counter(r["stage"] for r in AppendLog(run / "metrics.jsonl").read() if "seconds" in r and "stage" in r)


def compare(reference: Path, run: Path) -> Comparison:
    """Rows lost / duplicated / foreign per stage output against the reference, and other problems."""
    c = Comparison()
    ref_done, got_done = done_stages(reference), done_stages(run)
    if got_done != ref_done:
        c.problems.append(f"stages done differ: missing {sorted(ref_done - got_done)}, extra {sorted(got_done - ref_done)}")
    for stage in sorted(ref_done):
        want, got = stage_rows(reference, stage), stage_rows(run, stage)
        if want is None:
            continue
        got = got or Counter()
        c.lost[stage] = sum((want - got).values())
        c.duplicated[stage] = sum(n - 1 for k, n in got.items() if k in want and n > want[k])
        c.foreign[stage] = sum(n for k, n in got.items() if k not in want)
    want_steps, got_steps = _grpo_steps(reference), _grpo_steps(run)
    if want_steps != got_steps:
        c.problems.append(f"GRPO steps in metrics.jsonl differ: reference {dict(want_steps)}, got {dict(got_steps)}")
    records = _stage_records(run)
    if any(n != 1 for n in records.values()) or set(records) != ref_done:
        c.problems.append(f"stage records in metrics.jsonl are not exactly one per stage: {dict(records)}")
    c.problems += check_invariants(run, final=True)
    return c


# ---------------------------------------------------------------- one chain of kills


@dataclass
class KillResult:
    point: KillPoint
    reached: bool = False  # False: the run ended before the kill point
    landed: str | None = None  # the stage in progress when the signal was sent ("end": all were done)
    exit_code: int | None = None
    orphans: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""  # for checkpoint-partial: whether the checkpoint really was half-written

    @property
    def ok(self) -> bool:
        return not self.problems and not self.orphans


@dataclass
class ChainResult:
    kills: list[KillResult]
    resumed_ok: bool
    comparison: Comparison | None
    log: Path

    @property
    def ok(self) -> bool:
        return self.resumed_ok and all(k.ok for k in self.kills) and self.comparison is not None and self.comparison.ok


def _in_progress(run: Path, stages: Sequence[str]) -> str | None:
    done = done_stages(run)
    return next((s for s in stages if s not in done), None)


def strike(proc: Proc, run: Path, point: KillPoint, stages: Sequence[str], timeline: Timeline | None,
           timeout: float = 600) -> KillResult:
    """Wait for ``point`` in the running ``proc``, send its signal, check what the kill left."""
    t0 = time.monotonic()
    reached, _ = watch(proc, run, lambda seen, now: point.reached(run, seen, now, timeline), timeout)
    result = KillResult(point)
    if not reached:  # the run finished (or failed) first
        result.exit_code = proc.popen.wait()
        if result.exit_code != 0:
            result.problems.append(f"exited {result.exit_code} before the kill point; log {proc.log}")
        result.seconds = time.monotonic() - t0
        return result
    result.reached = True
    result.landed = _in_progress(run, stages) or "end"
    if point.at == "checkpoint-partial":
        state = RunDir(run).checkpoints(point.stage) / f"checkpoint-{int(point.value)}" / "trainer_state.json"
        result.note = "checkpoint complete already" if state.exists() else "checkpoint half-written"
    children = descendants(proc.popen.pid)
    if point.sig == signal.SIGINT:
        os.killpg(proc.popen.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        os.kill(proc.popen.pid, point.sig)
    try:
        result.exit_code = proc.popen.wait(timeout=120)
    except subprocess.TimeoutExpired:
        result.problems.append(f"{signal.Signals(point.sig).name} did not stop the run within 120 s")
        proc.popen.kill()
        result.exit_code = proc.popen.wait()
    if result.exit_code == 0:  # it exited on its own between the last look and the signal
        result.reached, result.note = False, "the run finished just before the signal"
        result.seconds = time.monotonic() - t0
        return result
    if point.sig in (signal.SIGINT, signal.SIGTERM):
        tail = proc.output()[-2000:]
        # 130, or death by SIGINT after our handler ran (the shell shows 130 for both): CPython
        # re-raises SIGINT at exit when the KeyboardInterrupt passed through some C/C++ frames
        # (seen about once in 20 Ctrl-C's during model loading), even though visplay caught it.
        if result.exit_code not in CLEAN_STOP_CODES:
            result.problems.append(f"{signal.Signals(point.sig).name}: exit code {result.exit_code}, expected 130")
        if f"visplay evolve --run {run} --resume" not in tail:
            result.problems.append(f"{signal.Signals(point.sig).name}: no resume hint in the output: {tail[-300:]!r}")
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    result.orphans = sorted(p for p in children if alive(p))
    result.problems += check_invariants(run)
    result.seconds = time.monotonic() - t0
    return result


def run_chain(run: Path, reference: Path, points: Sequence[KillPoint], overrides: Sequence[str], log: Path,
              timeline: Timeline | None = None, between: Callable[[Proc, int], None] | None = None,
              timeout: float = 600, preset: str | None = None) -> ChainResult:
    """Start a fresh run, strike each point in turn (resuming after each), resume to the end, compare.

    ``between(proc, i)`` runs right after the i-th (re)start, e.g. to try a second process on the run."""
    stages = stage_names(_iterations(overrides))
    kills = []
    for i, point in enumerate(points):
        proc = start_evolve(run, overrides, resume=read_manifest(run) is not None, log=log, preset=preset)
        if between is not None:
            between(proc, i)
        kills.append(strike(proc, run, point, stages, timeline, timeout))
        if not kills[-1].reached:
            break
    rc = 0
    if not (kills and not kills[-1].reached and kills[-1].exit_code == 0):
        rc = finish(start_evolve(run, overrides, resume=read_manifest(run) is not None, log=log, preset=preset),
                    run, timeout)
    comparison = compare(reference, run) if rc == 0 else None
    return ChainResult(kills, rc == 0, comparison, log)


def _iterations(overrides: Sequence[str]) -> int:
    for o in overrides:
        if o.startswith("evolve.iterations="):
            return int(o.split("=", 1)[1])
    return 3


def second_process(run: Path, log: Path, timeout: float = 120) -> tuple[int, str]:
    """Run ``visplay evolve --run RUN --resume`` to its end while another process may hold the run."""
    proc = start_evolve(run, (), resume=True, log=log)
    try:
        rc = proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        rc = proc.popen.wait()
    return rc, proc.output()
