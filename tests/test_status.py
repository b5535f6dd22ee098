"""`visplay status`: finished, crashed and locked runs (synthetic run directories, no model).

The locked case holds RUN/lock from a separate process with the loop's own `RunDir.lock()`, as a
run in progress in another terminal would, and checks that status sees it, names the holder's
pid, and leaves the lock usable. Status must never write into the run directory.
Run: `pytest -q tests/test_status.py` (a few seconds).
"""

from __future__ import annotations

import doctest
import json
import subprocess
import sys

import pytest

import visplay.status
from visplay.evolve.rundir import RunDir, RunError
from synthetic import make_synthetic_run
from visplay.status import (
    StatusError,
    expected_stages,
    last_metrics,
    lock_state,
    metrics_summary,
    next_stage,
    read_manifest,
    status_text,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("status") / "finished", iterations=2)


@pytest.fixture
def crashed(tmp_path):
    return make_synthetic_run(tmp_path / "crashed", iterations=2, stop_before="iter2/labels")


def _snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_finished_run(finished):
    before = _snapshot(finished)
    text = status_text(finished)
    assert "state: finished: all 11 stages done (2 iterations)" in text
    assert "stages (11/11 done)" in text and "pending" not in text and "stopped" not in text
    m = json.loads((finished / "manifest.json").read_text())
    e = m["stages"]["iter2/eval"]
    assert "iter2/eval" in text and f"greedy {e['greedy']:.3f}  maj {e['maj']:.3f}" in text
    last = json.loads((finished / "metrics.jsonl").read_text().splitlines()[-1])
    lines = (finished / "metrics.jsonl").read_text().count("\n")
    assert f"last metrics (line {lines}" in text and metrics_summary(last) in text
    assert "command: visplay evolve --preset tiny" in text
    assert _snapshot(finished) == before  # read-only


def test_crashed_run(crashed):
    text = status_text(crashed)
    assert "state: stopped before iter2/labels" in text
    assert "lock free (last holder pid 999999999 is gone)" in text
    assert f"resume: visplay evolve --run {crashed} --resume" in text
    assert "stages (8/11 done)" in text
    assert "stopped  iter2/labels" in text and "1/3 chunks written to iter2/labels.parts" in text
    assert "pending  iter2/reasoner" in text and "pending  iter2/eval" in text
    assert "last metrics" in text and "iter2/questions: rows 12" in text


def test_locked_run_in_another_process(crashed):
    code = ("import sys; from visplay.evolve.rundir import RunDir; r = RunDir(sys.argv[1]); r.lock(); "
            "print('locked', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, str(crashed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        state = lock_state(crashed)
        assert state.held and state.pid == child.pid
        text = status_text(crashed)
        assert "state: in progress: iter2/labels (running for" in text and f"lock held by pid {child.pid}" in text
        assert "running  iter2/labels" in text
        with pytest.raises(RunError, match="in use"):  # status released its probe; the holder still has it
            RunDir(crashed).lock()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert not lock_state(crashed).held
    with RunDir(crashed):  # free again, and status's probe did not keep it
        assert lock_state(crashed).held


def test_no_lock_file_is_not_created(crashed):
    (crashed / "lock").unlink()
    state = lock_state(crashed)
    assert not state.exists and not state.held
    assert "no lock file" in status_text(crashed)
    assert not (crashed / "lock").exists()


def test_grpo_checkpoint_progress_and_torn_metrics_line(tmp_path):
    run = make_synthetic_run(tmp_path / "r", iterations=2, stop_before="iter2/reasoner")
    ckpt = run / "iter2" / "reasoner.ckpt" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (run / "iter2" / "reasoner.ckpt" / "checkpoint-6").mkdir()  # being written: no trainer_state.json yet
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "iter2/reasoner", "step": 4, "rew')
    text = status_text(run)
    assert "GRPO: last checkpoint at step 3 of 6" in text
    record, count = last_metrics(run)
    assert record["stage"] == "iter2/labels" and count == len((run / "metrics.jsonl").read_text().splitlines()) - 1


def test_stage_order_and_errors(tmp_path, crashed, capsys):
    m = read_manifest(crashed)
    assert expected_stages(m)[:6] == ["iter0/eval", "iter1/questioner", "iter1/questions", "iter1/labels",
                                      "iter1/reasoner", "iter1/eval"]
    assert next_stage(m) == "iter2/labels"
    with pytest.raises(StatusError, match="not a run directory"):
        status_text(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{")
    with pytest.raises(StatusError, match="unreadable"):
        status_text(tmp_path / "bad")
    from visplay.cli import main

    assert main(["status", str(crashed)]) == 0 and "stopped before iter2/labels" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "empty")]) == 2 and "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_doctests():
    assert doctest.testmod(visplay.status).failed == 0
