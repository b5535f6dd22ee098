"""`visplay status` on the run directories of a real micro loop: finished, crashed, and locked.

The runs come from the session fixture `real_runs` (tests/conftest.py): `visplay evolve` on the
shipped tiny model, two iterations, SIGKILLed in iter2/labels after its first chunk part
(`crashed`), resumed and SIGKILLed in iter2/reasoner while a GRPO checkpoint was being saved
(`crashed_grpo`), then finished. Every expected value is read from the run's own files. The locked
case holds RUN/lock from a separate process with the loop's own `RunDir.lock()`, as a run in
progress in another terminal would, and checks that status sees it, names the holder's pid, and
leaves the lock usable. Status must never write into the run directory; an error fails the test.
Run: `pytest -q tests/test_status.py` (under a minute, most of it the fixture's loop).
"""

from __future__ import annotations

import doctest
import json
import math
import shlex
import shutil
import subprocess
import sys

import pytest

import visplay.status
from visplay.cli import main as cli_main
from visplay.run.stages import stage_names
from visplay.run.rundir import RunDir, RunError
from visplay.status import StatusError, last_metrics, lock_state, metrics_summary, status_text


def manifest(run) -> dict:
    return json.loads((run / "manifest.json").read_text())


def stages_of(run) -> list[str]:
    return stage_names(manifest(run)["config"]["evolve"]["iterations"])


def done(run) -> list[str]:
    m = manifest(run)
    return [s for s in stages_of(run) if m["stages"].get(s, {}).get("state") == "done"]


def last_line(run) -> tuple[dict, int]:
    """The last complete line of metrics.jsonl (parsed) and how many lines end in a newline."""
    text = (run / "metrics.jsonl").read_text()
    complete = text[:text.rfind("\n") + 1].splitlines()
    return json.loads(complete[-1]), len(complete)


@pytest.fixture
def crashed(real_runs, tmp_path):
    """A copy of the run SIGKILLed in iter2/labels (tests here change it)."""
    return shutil.copytree(real_runs.crashed, tmp_path / "crashed", symlinks=True)


def _snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_finished_run(real_runs):
    run = real_runs.finished
    before = _snapshot(run)
    text = status_text(run)
    n, total = manifest(run)["config"]["evolve"]["iterations"], len(stages_of(run))
    assert done(run) == stages_of(run)
    assert f"state: finished: all {total} stages done ({n} iterations)" in text
    assert f"stages ({total}/{total} done)" in text and "pending" not in text and "stopped" not in text
    m = manifest(run)
    for stage in stages_of(run):
        assert f"done     {stage}" in text
    e = m["stages"][f"iter{n}/eval"]
    assert f"greedy {e['greedy']:.3f}  maj {e['maj']:.3f}  pass {e['pass']:.3f}  n {e['n']}" in text
    lab = m["stages"]["iter1/labels"]
    assert f"kept {lab['n_kept']}/{lab['n_labeled']} labeled" in text
    assert f"trained on {m['stages'][f'iter{n}/reasoner']['train_rows']} rows" in text
    last, count = last_line(run)
    assert f"last metrics (line {count}" in text and metrics_summary(last) in text
    assert last["stage"] == f"iter{n}/eval"
    assert f"command: {shlex.join(m['command'])}" in text and m["command"][:2] == ["visplay", "evolve"]
    assert cli_main(["status", str(run)]) == 0
    assert _snapshot(run) == before  # read-only


def test_crashed_run(crashed):
    text = status_text(crashed)
    order, finished = stages_of(crashed), done(crashed)
    current = order[len(finished)]
    assert current == "iter2/labels" and finished == order[:len(finished)]
    pid = int((crashed / "lock").read_text())
    assert f"state: stopped before {current}" in text
    assert f"lock free (last holder pid {pid} is gone)" in text  # the SIGKILLed `visplay evolve`
    assert f"resume: visplay evolve --run {crashed} --resume" in text
    assert f"stages ({len(finished)}/{len(order)} done)" in text
    m = manifest(crashed)
    parts = len(list((crashed / "iter2" / "labels.parts").glob("*.parquet")))
    chunks = math.ceil(m["stages"]["iter2/questions"]["rows"] / m["config"]["evolve"]["chunk_size"])
    assert 1 <= parts < chunks
    assert f"stopped  {current}" in text and f"{parts}/{chunks} chunks written to iter2/labels.parts" in text
    for stage in order[len(finished) + 1:]:
        assert f"pending  {stage}" in text
    last, count = last_line(crashed)
    assert f"last metrics (line {count}" in text and metrics_summary(last) in text
    assert cli_main(["status", str(crashed)]) == 0


def test_locked_run_in_another_process(crashed):
    code = ("import sys; from visplay.run.rundir import RunDir; r = RunDir(sys.argv[1]); r.lock(); "
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


def test_grpo_checkpoint_progress_and_torn_metrics_line(real_runs, tmp_path):
    run = shutil.copytree(real_runs.crashed_grpo, tmp_path / "r", symlinks=True)
    order = stages_of(run)
    assert order[len(done(run))] == "iter2/reasoner"
    ckpts = {int(d.name.split("-")[1]): (d / "trainer_state.json").is_file()
             for d in (run / "iter2" / "reasoner.ckpt").glob("checkpoint-*")}
    complete = [step for step, ok in ckpts.items() if ok]
    assert complete, f"no complete checkpoint left by the kill: {ckpts}"  # a half-written one may be next to it
    steps = manifest(run)["config"]["evolve"]["reasoner"]["steps"]
    assert f"GRPO: last checkpoint at step {max(complete)} of {steps}" in status_text(run)
    record, count = last_line(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "iter2/reasoner", "step": 4, "rew')  # a line torn by a crash
    assert last_metrics(run) == (record, count)
    text = status_text(run)
    assert f"last metrics (line {count}" in text and metrics_summary(record) in text  # the torn line passed over


def test_stage_order_and_errors(tmp_path, crashed, capsys):
    m = visplay.status.read_manifest(crashed)
    assert visplay.status.expected_stages(m)[:6] == ["iter0/eval", "iter1/questioner", "iter1/questions",
                                                     "iter1/labels", "iter1/reasoner", "iter1/eval"]
    assert visplay.status.expected_stages(m) == stages_of(crashed)
    assert visplay.run.rundir.next_stage(m) == "iter2/labels"
    with pytest.raises(StatusError, match="not a run directory"):
        status_text(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{")
    with pytest.raises(StatusError, match="unreadable"):
        status_text(tmp_path / "bad")
    capsys.readouterr()
    assert cli_main(["status", str(crashed)]) == 0 and "stopped before iter2/labels" in capsys.readouterr().out
    assert cli_main(["status", str(tmp_path / "empty")]) == 2 and "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_doctests():
    assert doctest.testmod(visplay.status).failed == 0
