"""The self-evolution loop: the one place that knows the order of the stages.

    iter0/eval                               held-out accuracy of the base model
    for t in 1..N:
      iter<t>/questioner    Q_t = GRPO(Q_{t-1}), reward from the frozen reasoner R_{t-1}
      iter<t>/questions     Q_t writes k questions per unseen image
      iter<t>/labels        R_{t-1} samples m answers; majority = silver label; keep c in band
      iter<t>/reasoner      R_t = GRPO(R_{t-1}) on the kept silver labels
      iter<t>/eval          held-out accuracy of R_t (world seeds never used in training)

Two lineages from the same base model, as in the reference. Each stage's outputs are written
atomically, then the manifest marks it done; `--resume` skips done stages and GRPO phases resume
from their last checkpoint. This process is the only writer of the run; GRPO phases can run on
other GPUs/nodes through `hardware.launcher` and generation/labeling as per-GPU shards
(`visplay/evolve/worker.py`, docs/scaling.md). Run: `visplay evolve`; test: `pytest
tests/test_evolve.py tests/test_scale.py tests/test_shards.py`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from visplay.answers import Grader
from visplay.cards import publish_stage
from visplay.config import Config, from_dict, to_dict
from visplay.data.sources import skip_seen
from visplay.eval.world import evaluate_world, level_groups, paired, write_eval
from visplay.evolve.chunks import run_chunked
from visplay.evolve.preflight import open_images, preflight
from visplay.evolve.rundir import RunDir, RunError, sigterm_as_interrupt
from visplay.evolve.stages import (
    question_key,
    label_accuracy,
    level_mix,
    questioner_dataset,
    reasoner_dataset,
    reasoner_rows,
    skip_reasons,
)
from visplay.evolve.worker import (
    item_id,
    labels_fn,
    launch_phase,
    questions_fn,
    row_image_id,
    run_sharded_stage,
    stage_params,
)
from visplay.io import atomic_write_parquet
from visplay.models import load_model
from visplay.sampling.factory import open_sampler
from visplay.train import QuestionerRewardFn, ReasonerRewardFn, train_grpo

Say = Callable[[str], None]


@dataclass
class Lineage:
    questioner: Path
    reasoner: Path


def _seen_ids(run: RunDir, upto: int) -> set[str]:
    seen: set[str] = set()
    for t in range(1, upto):
        info = run.stage_info(f"iter{t}/questions")
        seen.update(info.get("image_ids", []))
    return seen


def _take_images(cfg: Config, run: RunDir, t: int, n: int):
    ev = cfg.evolve
    source = open_images(cfg, t)
    items = list(itertools.islice(skip_seen(source, _seen_ids(run, t)), n))
    if not items:
        raise ValueError(f"image source {ev.source} has no unseen images left for iteration {t}")
    return items, dict(source.skipped)


def _sampler(cfg: Config, run: RunDir, model_dir: Path, stage: str, progress: bool = False):
    """The stage's sampler (transformers in-process, or a server: docs/scaling.md); a launched
    server logs to ``<stage>.server.log`` in the run directory."""
    return open_sampler(cfg.sampler, model_dir, cfg.dtype, log_path=run.root / f"{stage}.server.log", progress=progress)


def _load_policy(model_dir: Path):
    """The model a GRPO phase trains: fp32 master weights (bf16 autocast on GPU when cfg.dtype is bfloat16)."""
    import torch

    return load_model(model_dir, dtype=torch.float32)


def _eval_stage(cfg: Config, run: RunDir, model_dir: Path, stage: str, say: Say, grader: Grader | None = None) -> dict:
    out = run.root / stage
    e = cfg.evolve.eval
    with _sampler(cfg, run, model_dir, stage, progress=True) as sampler:
        result = evaluate_world(sampler, cfg.world, e.split, e.n, e.k, e.temperature, e.top_k, e.max_new_tokens, e.seed,
                                e.families, grader=grader, labelled_levels=cfg.labelled_levels)
    write_eval(result, out, {"model": str(model_dir)})
    o = result.summary["overall"]
    info = {"greedy": o["greedy"], "maj": o["maj"], "pass": o["pass"], "n": o["n"],
            "by_level": {lv: {k: v[k] for k in ("n", "greedy", "maj")} for lv, v in result.summary["by_level"].items()}}
    groups = level_groups({r["level"] for r in result.rows}, cfg.labelled_levels)
    parts = []
    for name, levels in groups.items():
        rs = [r["greedy_correct"] for r in result.rows if r["level"] in levels]
        if rs:
            info[f"greedy_{name}"], info[f"n_{name}"] = sum(rs) / len(rs), len(rs)
            parts.append(f"{name} {info[f'greedy_{name}']:.1%}")
    say(f"{stage}: greedy {o['greedy']:.1%}" + (f" ({', '.join(parts)})" if parts else "")
        + f", maj@{e.k} {o['maj']:.1%}, pass@{e.k} {o['pass']:.1%}")
    return info


def run_evolve(cfg: Config, run_dir: str | Path, resume: bool = False, command: list[str] | None = None,
               say: Say = print) -> dict:
    """Run (or resume) the loop; returns {iteration: eval metrics}.

    Everything the run needs is checked first (`preflight`): bad input writes nothing."""
    run = RunDir(run_dir)
    if resume and not run.exists():
        raise ValueError(f"nothing to resume at {run.root}: start the run without --resume")
    base = preflight(cfg)
    with run, sigterm_as_interrupt():  # the lock first: two processes never both create or write one run
        if not resume:
            run.create(to_dict(cfg), command or [])
        # compare through the dataclasses, so keys added to the config since the run started take their defaults
        started = json.loads(json.dumps(to_dict(from_dict(Config, run.manifest()["config"], str(run.manifest_path)))))
        if resume and started != json.loads(json.dumps(to_dict(cfg))):
            raise ValueError(f"{run.manifest_path}: the run was started with another config; resume without changes")
        if resume:
            run.clean_temps()
        try:
            return _loop(cfg, run, base, say)
        except OSError as e:  # disk full, permissions: say which file, and that nothing finished is lost
            raise RunError(f"{e}; finished stages and written chunks are kept: fix the cause, then "
                           f"visplay evolve --run {run.root} --resume") from e


def _stage(run: RunDir, name: str, say: Say, fn: Callable[[], dict]) -> dict:
    if run.is_done(name):
        say(f"{name}: done (resumed)")
        publish_stage(run.root, name)  # in case a kill came between the mark and the tidy-up
        return run.stage_info(name)
    problem = run.output_problem(name)  # done once, but an output has gone since: run it again
    if problem:
        say(f"{name}: marked done but {problem}; running it again")
    run.drop_metrics(name)  # records of an attempt that was killed: this attempt logs them again
    t0 = time.time()
    info = fn()
    info["seconds"] = round(time.time() - t0, 1)
    run.log({"stage": name, **{k: v for k, v in info.items() if isinstance(v, (int, float, str)) or v is None}})
    run.mark(name, "done", **info)  # last: the manifest is the record that the stage finished
    publish_stage(run.root, name)  # chunk parts merged into the stage's parquet go; the dataset card
    return info


def _loop(cfg: Config, run: RunDir, base: Path, say: Say) -> dict:
    ev = cfg.evolve
    lineage = Lineage(base, base)
    grader = Grader(timeout=ev.grader_timeout, workers=ev.grader_workers)
    try:
        results = {0: _stage(run, "iter0/eval", say, lambda: _eval_stage(cfg, run, base, "iter0/eval", say, grader))}
        for t in range(1, ev.iterations + 1):
            lineage = _iteration(cfg, run, t, lineage, grader, say)
            if run.stage_info(f"iter{t}/reasoner").get("stopped"):
                break  # the label-free stop signal fired: the last trained reasoner is the run's result
            results[t] = _stage(run, f"iter{t}/eval", say,
                                lambda: _eval_stage(cfg, run, lineage.reasoner, f"iter{t}/eval", say, grader))
            _refresh_report(run, say)
    finally:
        grader.close()
    return results


def _refresh_report(run: RunDir, say: Say) -> None:
    """The HTML report is a view of the run: failing to draw it must never stop training."""
    try:
        from visplay.report import write_report

        write_report(run.root)
    except Exception as e:  # noqa: BLE001
        say(f"report not refreshed: {type(e).__name__}: {e}")


def _iteration(cfg: Config, run: RunDir, t: int, prev: Lineage, grader: Grader, say: Say) -> Lineage:
    ev = cfg.evolve
    it = run.root / f"iter{t}"
    q_dir, r_dir = it / "questioner", it / "reasoner"
    sharded = cfg.hardware.generation_shards > 1 and cfg.sampler.url is None
    sample = stage_params(cfg, t)

    def questioner_stage() -> dict:
        if not ev.train_questioner:
            return {"model": str(prev.questioner), "skipped": "frozen questioner (ablation)"}
        items, skipped = _take_images(cfg, run, t, ev.questioner_images)
        if cfg.hardware.launcher:  # on the launcher's GPUs/nodes (visplay/evolve/worker.py)
            history, guard = launch_phase(cfg, run, f"iter{t}/questioner", q_dir)
        else:
            model, processor = _load_policy(prev.questioner)
            with _sampler(cfg, run, prev.reasoner, f"iter{t}/questioner") as frozen:
                reward = QuestionerRewardFn(frozen, grader, m=ev.reward_samples, temperature=ev.temperature,
                                            top_k=ev.top_k, max_new_tokens=ev.max_new_tokens,
                                            threshold=ev.diversity_threshold if ev.diversity_penalty else 1.0,
                                            seed=ev.seed + t)
                _, history, guard = train_grpo(model, processor, questioner_dataset(items), reward, ev.questioner,
                                               q_dir, log_dir=run.root / "tb" / f"iter{t}-questioner",
                                               report_to=ev.report_to, bf16=cfg.dtype == "bfloat16")
        for h in history:
            run.log({"stage": f"iter{t}/questioner", **h})
        if guard:
            say(f"iter{t}/questioner: health guard stopped the phase: {guard}")
        return {"model": str(q_dir), "images": len(items), "skipped_images": skipped, "guard": guard}

    q_info = _stage(run, f"iter{t}/questioner", say, questioner_stage)
    questioner_dir = Path(q_info["model"])

    def questions_stage() -> dict:
        items, skipped = _take_images(cfg, run, t, ev.images_per_iteration)
        if sharded:  # one worker process per GPU, merged by image (visplay/evolve/worker.py)
            rows = run_sharded_stage(cfg, run, f"iter{t}/questions", items, it / "questions.parts", item_id, row_image_id)
        else:
            with _sampler(cfg, run, questioner_dir, f"iter{t}/questions") as sampler:
                rows = run_chunked(it / "questions.parts", items, ev.chunk_size, questions_fn(cfg, sampler, sample, t),
                                   desc=f"iter{t} questions", key=item_id, row_key=row_image_id)
        atomic_write_parquet(it / "questions.parquet", rows)
        valid = sum(r["valid"] for r in rows)
        say(f"iter{t}/questions: {len(rows)} questions for {len(items)} images, {valid / len(rows):.0%} valid")
        return {"rows": len(rows), "valid": valid, "image_ids": sorted({r["image_id"] for r in rows}),
                "skipped_images": skipped}

    _stage(run, f"iter{t}/questions", say, questions_stage)

    def labels_stage() -> dict:
        rows = pq.read_table(it / "questions.parquet").to_pylist()
        if sharded:
            labeled = run_sharded_stage(cfg, run, f"iter{t}/labels", rows, it / "labels.parts", question_key,
                                        question_key)
        else:
            with _sampler(cfg, run, prev.reasoner, f"iter{t}/labels") as sampler:
                labeled = run_chunked(it / "labels.parts", rows, ev.chunk_size, labels_fn(cfg, sampler, sample, grader),
                                      desc=f"iter{t} labels", key=question_key, row_key=question_key)
        atomic_write_parquet(it / "labels.parquet", labeled)
        stats, mix = label_accuracy(labeled), level_mix(labeled)
        say(f"iter{t}/labels: kept {stats['n_kept']}/{len(rows)}; pseudo-label accuracy (kept) "
            f"{_pct(stats['label_accuracy_kept'])}"
            + ("; kept by level " + " ".join(f"{lv}:{m['kept']}/{m['valid']}" for lv, m in mix.items()) if mix else ""))
        return {**stats, "skipped": skip_reasons(labeled), "by_level": mix}

    _stage(run, f"iter{t}/labels", say, labels_stage)

    def reasoner_stage() -> dict:
        stop = stop_signal(run.stage_info(f"iter{t}/labels"), ev.stop_agreement)
        if stop:
            say(f"iter{t}/reasoner: stopped before training: {stop}; the reasoner is carried over unchanged")
            return {"model": str(prev.reasoner), "skipped": stop, "train_rows": 0, "stopped": True}
        rows = reasoner_rows(run.root, t, ev.accumulate_labels)
        label_col = "questioner_answer" if ev.labels == "questioner" else "label"
        if not any(r["kept"] for r in rows):
            say(f"iter{t}/reasoner: no question kept in the agreement band; the reasoner is carried over unchanged")
            return {"model": str(prev.reasoner), "skipped": "no kept questions", "train_rows": 0}
        ds = reasoner_dataset(rows, label_col)
        if cfg.hardware.launcher:
            history, guard = launch_phase(cfg, run, f"iter{t}/reasoner", r_dir)
        else:
            model, processor = _load_policy(prev.reasoner)
            _, history, guard = train_grpo(model, processor, ds, ReasonerRewardFn(grader), ev.reasoner, r_dir,
                                           log_dir=run.root / "tb" / f"iter{t}-reasoner", report_to=ev.report_to,
                                           bf16=cfg.dtype == "bfloat16")
        for h in history:
            run.log({"stage": f"iter{t}/reasoner", **h})
        if guard:
            say(f"iter{t}/reasoner: health guard stopped the phase: {guard}")
        return {"model": str(r_dir), "train_rows": len(ds), "guard": guard}

    r_info = _stage(run, f"iter{t}/reasoner", say, reasoner_stage)
    return Lineage(questioner_dir, Path(r_info["model"]))


def stop_signal(labels_info: dict, stop_agreement: float | None) -> str | None:
    """Label-free collapse warning: when the reasoner's votes on fresh unlabeled questions agree
    this much, self-labels stop carrying information (min(c, 1-c) ~ 0) and the agreement filter
    starts letting consistent errors in (docs/experiments.md, session 6). None = keep going."""
    agreement = labels_info.get("mean_agreement")
    if stop_agreement is None or agreement is None or agreement < stop_agreement:
        return None
    return f"mean agreement {agreement:.2f} >= evolve.stop_agreement {stop_agreement}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def summary_table(results: dict, run_root: str | Path | None = None, k: int | None = None) -> str:
    """The run's result: one row per evaluated model (greedy overall, on labelled and unlabelled
    levels, maj@k, the kept-label accuracy that trained it), then the gain of the final model over
    the base on the same held-out items, paired (± standard error, exact McNemar p)."""
    maj = f"maj@{k}" if k else "maj@k"
    lines = [f"{'model':<8} {'greedy':>7} {'labelled':>9} {'unlabelled':>11} {maj:>7} {'kept labels':>12}"]
    stages = RunDir(run_root).manifest()["stages"] if run_root is not None else {}
    for t, r in sorted(results.items()):
        acc = stages.get(f"iter{t}/labels", {}).get("label_accuracy_kept")
        lines.append(f"{'base' if t == 0 else f'iter {t}':<8} {r['greedy']:>7.1%} {_pct(r.get('greedy_labelled')):>9} "
                     f"{_pct(r.get('greedy_unlabelled')):>11} {r['maj']:>7.1%} {_pct(acc):>12}")
    last = max(results)
    if run_root is None or last == 0:
        gain = results[last]["greedy"] - results[0]["greedy"]
        lines.append(f"held-out greedy gain: {100 * gain:+.1f} points")
        return "\n".join(lines)
    root = Path(run_root)
    before = pq.read_table(root / "iter0/eval/items.parquet").to_pylist()
    after = pq.read_table(root / f"iter{last}/eval/items.parquet").to_pylist()
    groups = [("all levels", lambda r: True)]
    if any(r.get("level") is not None for r in before):
        levels = {r["level"] for r in before}
        for name, lv in level_groups(levels, _labelled(root)).items():
            if lv:
                groups.append((f"{name} levels ({min(lv)}-{max(lv)})", lambda r, lv=lv: r["level"] in lv))
    for name, keep in groups:
        b = [r["greedy_correct"] for r in before if keep(r)]
        a = [r["greedy_correct"] for r in after if keep(r)]
        pt = paired(b, a)
        lines.append(f"{name}: {100 * pt['gain']:+.1f} ± {100 * pt['se']:.1f} points, iter {last} vs base "
                     f"(paired, n={pt['n']}, McNemar p={pt['p']:.3f})")
    final = stages.get(f"iter{last}/reasoner", {}).get("model")
    if final:
        lines.append(f"final model: {final if Path(final).is_absolute() else root / final}")
    return "\n".join(lines)


def _labelled(root: Path) -> list[int]:
    return json.loads((root / "iter0/eval/summary.json").read_text()).get("labelled_levels", [])
