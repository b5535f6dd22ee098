"""Data-parallel shards of a chunked stage, with two fake ranks run one after the other (no process group).

Proves: every item goes to exactly one rank (index % world), chunk seeds never collide across
ranks, the merge restores the unsharded order (several rows per item stay in order), equals the
one-process result, a rank's finished parts are reused on rerun, and an unfinished rank or a row
of another stage is a clear error; a worker behind a launcher exits when the loop is killed. Offline, seconds: `pytest -q tests/test_shards.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from visplay.dist import Ranks
from visplay.evolve.shards import ShardError, gather_shards, run_shard, shard, shard_dir


def rows_for(chunk, index, calls):
    calls.append((tuple(chunk), index))
    return [{"image_id": item, "sample": j, "chunk": index} for item in chunk for j in range(2)]


ITEMS = [f"img{i}" for i in range(11)]


def test_shard_is_a_partition_by_index():
    parts = [shard(ITEMS, r, 3) for r in range(3)]
    assert parts[1] == ["img1", "img4", "img7", "img10"]
    assert sorted(sum(parts, [])) == sorted(ITEMS)
    with pytest.raises(ValueError, match="rank < world"):
        shard(ITEMS, 3, 3)
    with pytest.raises(ValueError):
        Ranks(rank=2, world=2)


def test_two_ranks_merge_to_the_one_process_order(tmp_path):
    calls: list = []
    fn = lambda chunk, i: rows_for(chunk, i, calls)  # noqa: E731
    key = lambda item: item  # noqa: E731
    row_key = lambda row: row["image_id"]  # noqa: E731
    mine = [run_shard(tmp_path / "p", ITEMS, Ranks(r, 2), 2, fn) for r in (0, 1)]
    assert [r["image_id"] for r in mine[1]][::2] == ITEMS[1::2]
    chunk_ids = [i for _, i in calls]
    assert sorted(chunk_ids) == list(range(len(chunk_ids)))  # chunk i of rank r is global chunk 2i + r: all distinct
    merged = gather_shards(tmp_path / "p", ITEMS, 2, 2, key, row_key)
    assert [(r["image_id"], r["sample"]) for r in merged] == [(i, j) for i in ITEMS for j in range(2)]
    single = run_shard(tmp_path / "one", ITEMS, Ranks(), 2, lambda c, i: rows_for(c, i, []))
    assert [(r["image_id"], r["sample"]) for r in single] == [(r["image_id"], r["sample"]) for r in merged]
    assert (tmp_path / "one" / "00000.parquet").is_file()  # one process keeps the plain layout
    # a rank rerun after a crash reuses its finished parts
    calls.clear()
    again = run_shard(tmp_path / "p", ITEMS, Ranks(1, 2), 2, fn)
    assert calls == [] and again == mine[1]


def test_unfinished_rank_and_foreign_rows_are_errors(tmp_path):
    fn = lambda chunk, i: rows_for(chunk, i, [])  # noqa: E731
    run_shard(tmp_path / "p", ITEMS, Ranks(0, 2), 2, fn)
    with pytest.raises(ShardError, match=r"rank 1 of 2 has not finished: 3 of 3 parts missing"):
        gather_shards(tmp_path / "p", ITEMS, 2, 2, lambda x: x, lambda r: r["image_id"])
    run_shard(tmp_path / "p", ITEMS, Ranks(1, 2), 2, fn)
    (shard_dir(tmp_path / "p", 1, 2) / "00001.parquet").unlink()
    with pytest.raises(ShardError, match="first: 00001.parquet"):
        gather_shards(tmp_path / "p", ITEMS, 2, 2, lambda x: x, lambda r: r["image_id"])
    run_shard(tmp_path / "p", ITEMS, Ranks(1, 2), 2, fn)
    with pytest.raises(ShardError, match="belong to no item"):
        gather_shards(tmp_path / "p", ITEMS[:-1], 2, 2, lambda x: x, lambda r: r["image_id"])
    with pytest.raises(ShardError, match="produced no row"):
        gather_shards(tmp_path / "p", ITEMS + ["img99"], 2, 2, lambda x: x, lambda r: r["image_id"])


@pytest.mark.slow  # ~60 s: five worker processes each import torch
def test_loop_with_shard_workers_and_a_launched_grpo_worker(micro_model_dir, tmp_path):
    """The loop hands generation/labeling to 2 shard processes and both GRPO phases to a launched
    worker (`{python}` = one plain process here; `accelerate launch ...` on GPUs): same stages,
    merged rows in image order, models saved by the worker with their phase record."""
    import json

    import pyarrow.parquet as pq
    from test_evolve import SHORT, STAGES

    from visplay.config import load_config
    from visplay.evolve.loop import run_evolve
    from visplay.models import PHASE_RECORD, load_model

    over = SHORT + [f"model={micro_model_dir}", "evolve.max_new_tokens=8", "evolve.questioner.max_completion_length=8",
                    "evolve.reasoner.max_completion_length=8", "eval.max_new_tokens=8",
                    "evolve.chunk_size=4", "hardware.generation_shards=2", "hardware.launcher='{python}'"]
    run = tmp_path / "run"
    run_evolve(load_config("tiny", over), run, say=print)
    m = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(m[s]["state"] == "done" for s in STAGES)
    # the shards' parts were merged into the stage's parquet, then removed with the stage done
    for stage in ("questions", "labels"):
        assert not (run / f"iter1/{stage}.parts").exists()
        assert (run / f"iter1/{stage}.shard1.log").is_file()
    questions = pq.read_table(run / "iter1/questions.parquet").to_pylist()
    labels = pq.read_table(run / "iter1/labels.parquet").to_pylist()
    assert len(questions) == 12 and [r["image_id"] for r in labels] == [r["image_id"] for r in questions]
    assert [r["image_id"] for r in questions] == [f"world/unlabeled/{i}" for i in range(12)]
    # the questioner phase ran in the worker: model + record saved together, history back in the metrics
    assert (run / "iter1/questioner" / PHASE_RECORD).is_file() and (run / "iter1/questioner.worker.log").is_file()
    model, _ = load_model(run / "iter1/questioner")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("questioner/valid" in x for x in logged if x["stage"] == "iter1/questioner")


def reasoner_run(tmp_path, model_dir, launcher, overrides=()):
    """A run directory whose iteration 1 stands just before its reasoner phase (8 kept silver labels)."""
    from test_evolve import SHORT

    from visplay.config import load_config, to_dict
    from visplay.run.rundir import RunDir
    from visplay.evolve.rows import png_bytes
    from visplay.io import atomic_write_parquet
    from visplay.worlds.scene import make_scene

    # weight decay moves the weights even when the random model earns no reward (zero advantages)
    cfg = load_config("tiny", SHORT + [f"model={model_dir}", "evolve.reasoner.max_completion_length=6",
                                       "evolve.reasoner.weight_decay=0.5", "evolve.reasoner.lr=0.01",
                                       f'hardware.launcher="{launcher}"', *overrides])
    run = RunDir(tmp_path / "run")
    run.create(to_dict(cfg), [])
    run.mark("iter1/questioner", "done", model=str(model_dir))
    rows = [{"image_id": f"world/unlabeled/{i}", "sample": 0, "kept": True, "question": "How many red objects are there?",
             "label": str(i % 3), "image_png": png_bytes(make_scene("unlabeled", i).render())} for i in range(8)]
    atomic_write_parquet(run.root / "iter1/labels.parquet", rows)
    return cfg, run


def test_launched_reasoner_phase_on_two_ranks_saves_model_and_record(micro_model_dir, tmp_path):
    """`launch_phase` runs the worker under a real 2-process launcher (torchrun, gloo on CPU: DDP), which
    trains on labels.parquet and saves the gathered model with its record on rank 0; asking again
    returns the record without training; a launcher that fails is an error quoting its log."""
    from visplay.evolve.launch import WorkerError, launch_phase
    from visplay.models import PHASE_RECORD, load_model

    cfg, run = reasoner_run(tmp_path, micro_model_dir, "{python} -m torch.distributed.run --nproc_per_node 2")
    out = run.root / "iter1/reasoner"
    history, guard = launch_phase(cfg, run, "iter1/reasoner")
    log = (run.root / "iter1/reasoner.worker.log").read_text()
    assert "iter1/reasoner: rank 0 of 2" in log and "iter1/reasoner: rank 1 of 2" in log  # trained together
    assert [h["step"] for h in history if "loss" in h] == [1, 2] and guard is None
    assert any("reasoner/accuracy" in h for h in history)
    model, _ = load_model(out)
    trained = dict(model.named_parameters())
    base, _ = load_model(micro_model_dir)
    assert any((trained[n] != p).any() for n, p in base.named_parameters() if ".visual." not in f".{n}")
    assert not (run.root / "iter1/reasoner.ckpt").exists()
    stamp = (out / PHASE_RECORD).stat().st_mtime_ns
    assert launch_phase(cfg, run, "iter1/reasoner")[0] == history  # saved: not trained again
    assert (out / PHASE_RECORD).stat().st_mtime_ns == stamp
    broken_cfg, broken = reasoner_run(tmp_path / "b", micro_model_dir,
                                      "{python} -c 'import sys; print(sys.argv[1:]); raise SystemExit(7)'")
    with pytest.raises(WorkerError, match=r"(?s)exited with status 7.*'grpo', '.*/run', 'iter1/reasoner'"):
        launch_phase(broken_cfg, broken, "iter1/reasoner")


_CONTROLLER = """
import shlex, subprocess, sys, time
from visplay.evolve.launch import worker_env
child = ("import os, time; from visplay.evolve.launch import CONTROLLER_PID; "
         "from visplay.evolve.worker import exit_with_controller; "
         "exit_with_controller(int(os.environ[CONTROLLER_PID]) if sys.argv[1] == 'watch' else None, 0.2); "
         "print(os.getpid(), flush=True); time.sleep(120)")
# through a shell, as a launcher would be: the worker is a grandchild the kernel cannot signal for us
cmd = f"{shlex.quote(sys.executable)} -c {shlex.quote('import sys; ' + child)} {sys.argv[1]}"
p = subprocess.Popen(["sh", "-c", cmd],
                     env=worker_env(), stdout=subprocess.PIPE, text=True)
print(p.stdout.readline().strip(), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.parametrize("mode", ["watch", "no-watch"])
def test_workers_exit_when_the_loop_is_killed(mode):
    """SIGKILL the controller: a watching worker behind a launcher exits within seconds; one that
    does not watch (the behaviour before) would be left running."""
    controller = subprocess.Popen([sys.executable, "-c", _CONTROLLER, mode], stdout=subprocess.PIPE, text=True)
    worker = int(controller.stdout.readline())
    assert _alive(worker)
    controller.kill()  # not reaped yet: the watcher must see through the zombie
    deadline = time.time() + (15 if mode == "watch" else 3)  # the watcher polls every 0.2 s
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    try:
        assert _alive(worker) == (mode == "no-watch")
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
        controller.wait()


def sft_run(tmp_path, model_dir, shards: int, overrides=()):
    """A run directory whose iteration 1 stands just before its reasoner phase: a two-member committee
    (the micro model twice), co-evolving with SFT, 6 kept labels, member 1 agreeing on 4 of them."""
    from test_evolve import SHORT

    from visplay.config import load_config, to_dict
    from visplay.evolve.rows import png_bytes
    from visplay.io import atomic_write_parquet
    from visplay.run.rundir import RunDir
    from visplay.worlds.scene import make_scene

    short = [o for o in SHORT if not o.startswith("evolve.reasoner.")]  # GRPO knobs: an error under sft
    cfg = load_config("tiny", short + [f"model={model_dir}", f"evolve.committee=[{model_dir}]", "evolve.agreement=trace",
                                       "evolve.reasoner_objective=sft", "evolve.coevolve=true", "evolve.sft_epochs=1",
                                       "evolve.sft_batch_size=2", f"hardware.generation_shards={shards}", *overrides])
    run = RunDir(tmp_path / "run")
    run.create(to_dict(cfg), [])
    chain = "<think>a1 red 1</think>\\boxed{1}"
    rows = [{"image_id": f"world/unlabeled/{i}", "sample": 0, "kept": True, "question": "How many red objects are there?",
             "label": "1", "chains": [[chain], [chain] if i < 4 else []],
             "image_png": png_bytes(make_scene("unlabeled", i).render())} for i in range(6)]
    atomic_write_parquet(run.root / "iter1/labels.parquet", rows)
    run.mark("iter1/labels", "done", n_kept=6)
    return cfg, run


def test_member_slots_one_per_gpu_or_cpu_thread(monkeypatch):
    import torch

    from visplay.config import load_config
    from visplay.evolve.committee import member_slots

    one, four = load_config("tiny"), load_config("tiny", ["hardware.generation_shards=4"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for threads, pending, cfg, want in ((2, 2, one, 2), (1, 2, one, 1), (2, 1, one, 1), (8, 3, one, 3),
                                        (1, 2, four, 2), (1, 9, four, 4)):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        assert member_slots(cfg, pending) == want, (threads, pending, cfg.hardware.generation_shards)


def test_coevolving_members_train_at_once_in_worker_processes(micro_model_dir, tmp_path):
    """With ``hardware.generation_shards`` 2, the reasoner and its committee partner fine-tune in two
    `worker sft` processes at once; the loop reads their models and logs back and gets what one
    process gets (the same steps, the same weights up to float rounding); asking again trains nothing."""
    from pathlib import Path

    import torch

    from visplay.answers import Grader
    from visplay.evolve.context import Context
    from visplay.evolve.steps import run_reasoner
    from visplay.models import PHASE_RECORD, load_model

    runs = {}
    for shards in (2, 1):
        cfg, run = sft_run(tmp_path / f"s{shards}", micro_model_dir, shards)
        info, steps = _sft_round(cfg, run, micro_model_dir, 2 if shards == 2 else 1)  # one thread: one after the other
        assert info["train_rows"] == 6
        assert steps == {0: [3], 1: [2]}  # 6 and 4 agreeing chains, batch 2, one epoch
        runs[shards] = (cfg, run)
    iter1 = {s: run.root / "iter1" for s, (_, run) in runs.items()}
    assert "member 1 -> " in (iter1[2] / "reasoner.member1.log").read_text()
    assert not (iter1[1] / "reasoner.member1.log").exists()
    for name in ("reasoner", "committee1"):
        a, _ = load_model(iter1[2] / name)
        b, _ = load_model(iter1[1] / name)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-4, rtol=1e-3), n  # one thread or two: float rounding only
    stamps = [(iter1[2] / name / PHASE_RECORD).stat().st_mtime_ns for name in ("reasoner", "committee1")]
    cfg, run = runs[2]
    with Grader(workers=0) as g:
        again = run_reasoner(Context(cfg, run, micro_model_dir, 1, g, say=print))
    assert [(iter1[2] / name / PHASE_RECORD).stat().st_mtime_ns for name in ("reasoner", "committee1")] == stamps
    assert (iter1[2] / "reasoner.member1.log").read_text().count("member 1 -> ") == 1  # no worker started again
    assert Path(again["committee"][0]).name == "committee1"


TORCHRUN_2 = "{python} -m torch.distributed.run --nproc_per_node 2"


def _sft_round(cfg, run, model_dir, threads: int) -> tuple[dict, dict[int, list[int]]]:
    """Iteration 1's reasoner stage (the committee's SFT) at ``threads`` torch threads: its record (both
    members saved) and each member's logged SFT steps."""
    from pathlib import Path

    import torch

    from visplay.answers import Grader
    from visplay.evolve.context import Context
    from visplay.evolve.steps import run_reasoner

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with Grader(workers=0) as g:
            info = run_reasoner(Context(cfg, run, model_dir, 1, g, say=print))
    finally:
        torch.set_num_threads(before)
    assert [Path(m).name for m in [info["model"], *info["committee"]]] == ["reasoner", "committee1"]
    logged = [json.loads(x) for x in (run.root / "metrics.jsonl").read_text().splitlines()]
    return info, {m: [h["step"] for h in logged if h.get("member") == m and "train_loss" in h] for m in (0, 1)}


def test_committee_sft_under_the_launcher_trains_each_member_on_every_rank(micro_model_dir, tmp_path):
    """``hardware.launcher`` with the SFT objective: each co-evolving member's SFT runs as
    ``{launcher} -m visplay.evolve.worker sft RUN iter1/reasoner MEMBER`` (torchrun, 2 processes, gloo:
    DDP on CPU), one member after the other; the global batch stays ``sft_batch_size`` (1 row per
    rank), so the steps and the saved weights are the in-process ones up to float rounding; rank 0
    saves each member with its record; asking again launches nothing."""
    import torch

    from visplay.answers import Grader
    from visplay.evolve.context import Context
    from visplay.evolve.steps import run_reasoner
    from visplay.models import PHASE_RECORD, load_model

    runs = {}
    for where, overrides in (("launched", [f'hardware.launcher="{TORCHRUN_2}"']), ("in process", [])):
        cfg, run = sft_run(tmp_path / where.replace(" ", "-"), micro_model_dir, 1, overrides)
        info, steps = _sft_round(cfg, run, micro_model_dir, 1)  # in process: one slot, one member after the other
        assert steps == {0: [3], 1: [2]}  # 6 and 4 agreeing chains, global batch 2, one epoch
        runs[where] = (cfg, run, info)
    iter1 = {w: run.root / "iter1" for w, (_, run, _) in runs.items()}
    for member in (0, 1):
        log = (iter1["launched"] / f"reasoner.member{member}.log").read_text()
        assert f"member {member}, rank 0 of 2" in log and f"member {member}, rank 1 of 2" in log, log[-2000:]
    assert not list(iter1["in process"].glob("*.log"))
    for name in ("reasoner", "committee1"):
        a, _ = load_model(iter1["launched"] / name)
        b, _ = load_model(iter1["in process"] / name)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-4, rtol=1e-3), n  # DDP over 2 ranks or one process: rounding only
        assert not (iter1["launched"] / f"{name}.ckpt").exists() and not (iter1["launched"] / f"{name}.tmp").exists()
    cfg, run, _ = runs["launched"]
    stamps = [(iter1["launched"] / name / PHASE_RECORD).stat().st_mtime_ns for name in ("reasoner", "committee1")]
    with Grader(workers=0) as g:
        run_reasoner(Context(cfg, run, micro_model_dir, 1, g, say=print))
    assert [(iter1["launched"] / name / PHASE_RECORD).stat().st_mtime_ns for name in ("reasoner", "committee1")] == stamps
    assert (iter1["launched"] / "reasoner.member1.log").read_text().count("member 1 -> ") == 1  # not launched again
