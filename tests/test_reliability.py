"""Crash consistency and environment faults, in-process: atomic outputs, complete-or-absent
checkpoints, resumable chunks, the metrics log, the lock, a full disk, an unwritable run directory.

The kill-the-process tests are in tests/test_faults.py; these inject each fault at one exact
spot instead (a monkeypatched fsync that fails with ENOSPC for one file, a checkpoint folder
without its trainer_state.json, a torn metrics line), so each guarantee is checked on its own.
Offline, about a minute: `pytest -q tests/test_reliability.py`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faults import VISPLAY_LOOP
from visplay.cli import main
from visplay.evolve.chunks import run_chunked
from visplay.run.rundir import RunDir, RunError, sigterm_as_interrupt
from visplay.io import WriteError, atomic_dir, atomic_write_bytes, atomic_write_parquet, stale_temps
from visplay.models import PHASE_RECORD, finished_phase, last_checkpoint

MICRO_RUN = VISPLAY_LOOP + [
    "evolve.iterations=1", "evolve.questioner.steps=1", "evolve.questioner.prompts_per_step=2",
    "evolve.questioner.num_generations=2", "evolve.questioner_images=2", "evolve.images_per_iteration=6",
    "evolve.chunk_size=2", "evolve.reward_samples=2", "evolve.label_samples=2", "evolve.reasoner.steps=1",
    "eval.n=2", "eval.k=2", "evolve.report_to=[]", "evolve.grader_workers=0",
    "evolve.max_new_tokens=4", "evolve.questioner.max_completion_length=4", "eval.max_new_tokens=4",
]


def _sets(items):
    return [a for o in items for a in ("--set", o)]


# ---------------------------------------------------------------- atomic files and folders


def _fail_fsync_for(monkeypatch, fragment: str, err: int = errno.ENOSPC) -> list[str]:
    """Make fsync fail with ``err`` for files whose path contains ``fragment`` (what a full disk does
    to delayed allocation); returns the paths it failed for."""
    real = os.fsync
    failed: list[str] = []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if fragment in path:
            failed.append(path)
            raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def test_failed_write_keeps_the_old_file_names_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out" / "labels.parquet"
    atomic_write_parquet(target, [{"a": 1}])
    old = target.read_bytes()
    failed = _fail_fsync_for(monkeypatch, "labels.parquet")
    with pytest.raises(WriteError) as e:
        atomic_write_parquet(target, [{"a": 2}])
    assert failed, "the fault was never injected"
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert str(e.value) == f"cannot write {target}: No space left on device (free some space, then rerun or --resume)"
    assert target.read_bytes() == old
    assert stale_temps(tmp_path) == [] and sorted(p.name for p in target.parent.iterdir()) == ["labels.parquet"]


def test_atomic_dir_is_complete_or_absent(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.bin").write_bytes(b"one")
    assert (out / "a.bin").read_bytes() == b"one"
    with pytest.raises(RuntimeError, match="killed"), atomic_dir(out) as tmp:
        (tmp / "a.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert (out / "a.bin").read_bytes() == b"one" and not (tmp_path / "model.tmp").exists()
    # what a SIGKILL mid-save leaves (no cleanup ran): found as stale, and replaced by the next save
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / ".x.json.abc123.tmp").write_text("{")
    assert [p.name for p in stale_temps(tmp_path)] == [".x.json.abc123.tmp", "model.tmp"]
    with atomic_dir(out) as tmp:
        (tmp / "b.bin").write_bytes(b"two")
    assert sorted(p.name for p in out.iterdir()) == ["b.bin"]


def test_atomic_write_into_unwritable_place_is_a_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError, match=f"cannot write {blocker}/x.json"):
        atomic_write_bytes(blocker / "x.json", b"{}")


# ---------------------------------------------------------------- checkpoints


def _checkpoint(ckpt_dir: Path, step: int, state: str | None = '{"global_step": 1}', weights: bool = True) -> Path:
    d = ckpt_dir / f"checkpoint-{step}"
    d.mkdir(parents=True)
    if weights:
        (d / "model.safetensors").write_bytes(b"w")
    if state is not None:
        (d / "trainer_state.json").write_text(state)
    return d


def test_last_checkpoint_skips_what_a_kill_left_half_written(tmp_path):
    ckpt = tmp_path / "q.ckpt"
    assert last_checkpoint(ckpt) is None
    _checkpoint(ckpt, 2)
    _checkpoint(ckpt, 3, state=None)  # killed before the Trainer wrote trainer_state.json (written last)
    assert last_checkpoint(ckpt) == str(ckpt / "checkpoint-2")
    _checkpoint(ckpt, 4, state='{"global_st')  # torn state file
    _checkpoint(ckpt, 5, weights=False)  # half deleted by checkpoint rotation
    (ckpt / "checkpoint-9.tmp").mkdir()
    assert last_checkpoint(ckpt) == str(ckpt / "checkpoint-2")
    _checkpoint(ckpt, 10)
    assert last_checkpoint(ckpt) == str(ckpt / "checkpoint-10")  # by step number, not by name order


def test_a_phase_saved_before_the_kill_is_not_trained_again(micro_model_dir, tmp_path):
    import shutil

    from visplay.config import GRPOPhase
    from visplay.evolve.grpo import train_grpo

    out = tmp_path / "iter1" / "reasoner"
    assert finished_phase(out) is None
    shutil.copytree(micro_model_dir, out)
    assert finished_phase(out) is None  # a model folder without the phase record is not a finished phase
    history = [{"loss": 0.1, "step": 1}, {"train_runtime": 1.0, "step": 1}]
    (out / PHASE_RECORD).write_text(json.dumps({"log_history": history, "guard": None}))
    (tmp_path / "iter1" / "reasoner.ckpt" / "checkpoint-1").mkdir(parents=True)
    # model/processor/dataset None: any attempt to build a trainer would fail
    got = train_grpo(None, None, None, None, GRPOPhase(), out)
    assert got == (out, history, None)
    assert not (tmp_path / "iter1" / "reasoner.ckpt").exists()


# ---------------------------------------------------------------- chunked stage outputs


def test_chunks_resume_mid_way_and_never_mix_in_stale_parts(tmp_path):
    parts = tmp_path / "questions.parts"
    calls: list[int] = []

    def fn(chunk, index):
        calls.append(index)
        if len(calls) == 3 and crash:
            raise KeyboardInterrupt  # the process dies while computing chunk 2
        return [{"image_id": x, "value": f"{x}@{index}"} for x in chunk]

    items = [f"img{i}" for i in range(7)]
    key = dict(key=str, row_key=lambda r: r["image_id"])
    crash = True
    with pytest.raises(KeyboardInterrupt):
        run_chunked(parts, items, 3, fn, **key)
    assert calls == [0, 1, 2] and sorted(p.name for p in parts.glob("*.parquet")) == ["00000.parquet", "00001.parquet"]
    crash, calls[:] = False, []
    rows = run_chunked(parts, items, 3, fn, **key)
    assert calls == [2]  # only the missing chunk is computed
    assert [r["image_id"] for r in rows] == items

    # a damaged part and a part holding other items' rows are recomputed, not trusted
    (parts / "00000.parquet").write_bytes(b"PAR1 garbage")
    atomic_write_parquet(parts / "00001.parquet", [{"image_id": "elsewhere", "value": "?"}])
    calls[:] = []
    assert [r["image_id"] for r in run_chunked(parts, items, 3, fn, **key)] == items and calls == [0, 1]

    # other items (or another chunk size): the old parts are discarded, not mixed in
    calls[:] = []
    other = [f"img{i}" for i in range(3, 10)]
    assert [r["image_id"] for r in run_chunked(parts, other, 3, fn, **key)] == other and calls == [0, 1, 2]
    calls[:] = []
    run_chunked(parts, other, 2, fn, **key)
    assert calls == [0, 1, 2, 3]


# ---------------------------------------------------------------- the run directory


def test_metrics_lines_torn_by_a_kill_are_skipped_and_an_unfinished_stage_is_logged_once(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.log({"stage": "iter1/questioner", "step": 1, "loss": 0.5})
    with open(run.root / "metrics.jsonl", "ab") as f:
        f.write(b'{"stage": "iter1/questioner", "step": 2, "lo')  # SIGKILL mid-write
    run.log({"stage": "iter0/eval", "seconds": 1.0})
    assert [r.get("step") for r in run.metrics()] == [1, None]  # the torn line is skipped, the next one intact
    assert run.drop_metrics("iter1/questioner") == 1  # the stage reruns: its old records go
    assert [r["stage"] for r in run.metrics()] == ["iter0/eval"]
    assert (run.root / "metrics.jsonl").read_text().count("\n") == 1
    assert run.drop_metrics("iter1/questioner") == 0


def test_lock_is_taken_before_the_run_is_created(micro_model_dir, tmp_path, capsys):
    """A second `evolve` on a run being started by another process must not create or touch it."""
    root = tmp_path / "run"
    holder = RunDir(root)
    holder.lock()
    try:
        rc = main(["evolve", "--run", str(root), "--set", f"model={micro_model_dir}", *_sets(MICRO_RUN)])
    finally:
        holder.unlock()
    assert rc == 2 and "in use by another visplay process" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["lock"]  # no manifest was written


def test_temps_left_by_a_kill_are_swept_on_resume_only_under_the_lock(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.root / "iter1" / "questioner.tmp").mkdir(parents=True)
    (run.root / "iter1" / ".labels.parquet.k3j2.tmp").write_bytes(b"half")
    (run.root / "iter1" / "questioner.ckpt").mkdir()  # resume state, not a temp
    with pytest.raises(RunError, match="lock"):
        run.clean_temps()
    with run:
        removed = run.clean_temps()
    assert [p.name for p in removed] == [".labels.parquet.k3j2.tmp", "questioner.tmp"]
    assert sorted(p.name for p in (run.root / "iter1").iterdir()) == ["questioner.ckpt"]


def test_sigterm_stops_like_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line would
        raise AssertionError("SIGTERM did not interrupt")
    assert signal.getsignal(signal.SIGTERM) == before


# ---------------------------------------------------------------- environment faults, through the CLI


def test_disk_full_mid_stage_is_a_clear_error_and_the_run_resumes(micro_model_dir, tmp_path, monkeypatch, capsys):
    root = tmp_path / "run"
    argv = ["evolve", "--run", str(root), "--set", f"model={micro_model_dir}", *_sets(MICRO_RUN)]
    failed = _fail_fsync_for(monkeypatch, "questions.parts/.00001.parquet")
    assert main(argv) == 2
    err = capsys.readouterr().err
    part = root / "iter1" / "questions.parts" / "00001.parquet"
    assert failed and f"cannot write {part}: No space left on device" in err
    assert f"visplay evolve --run {root} --resume" in err
    manifest = json.loads((root / "manifest.json").read_text())["stages"]
    assert manifest["iter1/questioner"]["state"] == "done" and "iter1/questions" not in manifest
    first = root / "iter1" / "questions.parts" / "00000.parquet"
    kept = first.stat().st_mtime_ns
    assert not part.exists() and stale_temps(root) == []

    monkeypatch.undo()  # space freed
    from visplay.evolve import chunks

    written, write = [], chunks.atomic_write_parquet
    monkeypatch.setattr(chunks, "atomic_write_parquet", lambda path, rows: written.append(Path(path)) or write(path, rows))
    assert main(["evolve", "--run", str(root), "--resume"]) == 0
    assert kept and first not in written and part in written  # the chunk written before the failure was reused
    assert not first.parent.exists()  # merged into questions.parquet, then removed with the stage done
    rows = pq.read_table(root / "iter1" / "questions.parquet").to_pylist()
    assert sorted(r["image_id"] for r in rows) == [f"world/unlabeled/{i}" for i in range(6)]
    assert all(s["state"] == "done" for s in json.loads((root / "manifest.json").read_text())["stages"].values())


def test_unwritable_run_directory_is_a_clear_error(micro_model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["--set", f"model={micro_model_dir}", *_sets(MICRO_RUN)]
    assert main(["evolve", "--run", str(blocker / "run"), *argv]) == 2
    assert f"cannot write the run directory {blocker / 'run'}" in capsys.readouterr().err

    if os.geteuid() != 0:  # permissions bind everyone but root
        parent = tmp_path / "read-only"
        parent.mkdir(mode=0o555)
        assert main(["evolve", "--run", str(parent / "run"), *argv]) == 2
        assert "Permission denied" in capsys.readouterr().err
    else:  # root: a read-only file system (sysfs refuses even root) where there is one
        try:
            os.mkdir("/sys/visplay-probe")
            os.rmdir("/sys/visplay-probe")
            pytest.skip("no place here that refuses writes to root")
        except OSError:
            pass
        assert main(["evolve", "--run", "/sys/visplay-test-run", *argv]) == 2
        assert "cannot write the run directory /sys/visplay-test-run" in capsys.readouterr().err


# ---------------------------------------------------------------- the harness itself can fail


def _fake_run(root: Path, question_ids: list[str], steps: list[int], stage_records: int = 1) -> Path:
    """A finished run as the harness reads it (no models): manifest, questions, eval items, metrics."""
    done = {"state": "done"}
    stages = {"iter0/eval": done, "iter1/questions": {**done, "rows": len(question_ids)}}
    (root / "iter0" / "eval").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"stages": stages}))
    atomic_write_parquet(root / "iter1" / "questions.parquet", [{"image_id": i, "sample": 0} for i in question_ids])
    atomic_write_parquet(root / "iter0" / "eval" / "items.parquet", [{"id": "w/0", "question": "q"}])
    (root / "iter0" / "eval" / "summary.json").write_text("{}")
    records = [{"stage": "iter1/questioner", "step": s, "loss": 0.0} for s in steps]
    records += [{"stage": s, "seconds": 1.0} for s in stages for _ in range(stage_records)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_the_fault_harness_reports_lost_duplicated_and_foreign_rows(tmp_path):
    from faults import compare

    ref = _fake_run(tmp_path / "ref", ["a", "b", "c"], [1, 2])
    assert compare(ref, _fake_run(tmp_path / "same", ["a", "b", "c"], [1, 2])).ok
    bad = compare(ref, _fake_run(tmp_path / "bad", ["a", "a", "x"], [1, 1, 2], stage_records=2))
    assert (bad.lost["iter1/questions"], bad.duplicated["iter1/questions"], bad.foreign["iter1/questions"]) == (2, 1, 1)
    assert not bad.ok and any("GRPO steps" in p for p in bad.problems)
    assert any("exactly one per stage" in p for p in bad.problems)
    (tmp_path / "bad" / "iter1" / ".x.parquet.k2.tmp").write_bytes(b"")
    assert any("temp file left behind" in p for p in compare(ref, tmp_path / "bad").problems)


def test_kill_sweep_packs_points_into_runs_in_stage_order():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kill_sweep", Path(__file__).parents[1] / "scripts" / "kill_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    from faults import stage_names

    stages = stage_names(1)
    points = sweep.kill_points(stages, seed=0, random_per_stage=2)
    assert len(points) == 34 and len(set(points)) == 34
    chains = sweep.chains(points, stages, length=6)
    assert sorted(map(str, (p for c in chains for p in c))) == sorted(map(str, points))
    for chain in chains:
        order = [stages.index(p.stage) for p in chain]
        assert order == sorted(set(order)) and len(chain) <= 6
