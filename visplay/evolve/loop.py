"""The self-evolution loop: runs `visplay.evolve.steps.STEPS` (the stages of `visplay.run.stages.STAGES`,
each with its body) in order, once per iteration.

    iter0/eval                               held-out accuracy of the base model
    survey                                   (evolve.survey_images) the pool, easiest first
    for t in 1..N:
      iter<t>/questioner    Q_t = GRPO(Q_{t-1}), reward from the frozen reasoner R_{t-1}
      iter<t>/questions     Q_t writes k questions per unseen image
      iter<t>/labels        R_{t-1} (and the committee) sample m answers each; the vote's label; keep c in band
      iter<t>/reasoner      R_t from R_{t-1} on the kept labels: GRPO or SFT (evolve.reasoner_objective)
      iter<t>/eval          held-out accuracy of R_t (world seeds never used in training)

What a given config runs is printed by `visplay evolve --dry-run` (`visplay.evolve.plan`). Two
lineages from the same base model, as in the reference. Each stage's body is
`visplay.evolve.steps.run_<kind>`; its outputs are written atomically, then the manifest marks it
done; `--resume` skips done stages and GRPO phases resume from their last checkpoint. This process
is the only writer of the manifest; GRPO phases can run on other GPUs/nodes through
`hardware.launcher` and generation/labeling as per-GPU shards (`visplay/evolve/worker.py`,
docs/scaling.md). Run: `visplay evolve`; test: `pytest tests/test_evolve.py tests/test_scale.py
tests/test_shards.py`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from visplay.answers import Grader, rate
from visplay.run.publish import publish_stage
from visplay.config import Config, config_from_manifest, to_dict
from visplay.eval.world import level_groups, paired
from visplay.evolve.context import Context
from visplay.evolve.steps import BASELINE_STEP, STEPS, Step, pct, run_survey, stop_signal
from visplay.run.tracker import log_loop_metrics
from visplay.run.stages import BASELINE, stage_name
from visplay.evolve.preflight import preflight
from visplay.run.rundir import RunDir, RunError, sigterm_as_interrupt
from visplay.report import write_report

Say = Callable[[str], None]
__all__ = ["run_evolve", "stop_signal", "summary_table"]


def run_evolve(cfg: Config, run_dir: str | Path, resume: bool = False, command: list[str] | None = None,
               say: Say = print) -> dict:
    """Run (or resume) the loop; returns {iteration: eval metrics}.

    Everything the run needs is checked first (`preflight`): bad input writes nothing."""
    ev = cfg.evolve
    with _opened(cfg, run_dir, resume, command) as (run, base), \
            Grader(timeout=ev.grader_timeout, workers=ev.grader_workers) as grader:
        results = {0: _run_step(BASELINE_STEP, Context(cfg, run, base, 0, grader, say))}
        if ev.survey_images:  # the label-free curriculum orders the pool once, before the first iteration
            run_survey(Context(cfg, run, base, 0, grader, say))
        log_loop_metrics(run.root, ev.report_to, 0, run.manifest()["stages"])
        for t in range(1, ev.iterations + 1):
            ctx = Context(cfg, run, base, t, grader, say)
            for step in STEPS:  # questioner, questions, labels, reasoner, eval
                info = _run_step(step, ctx)
                if info.get("stopped"):
                    return results  # the label-free stop signal fired: the last trained reasoner is the result
            results[t] = info
            log_loop_metrics(run.root, ev.report_to, t, run.manifest()["stages"])
            _refresh_report(run, say)
    return results


@contextlib.contextmanager
def _opened(cfg: Config, run_dir: str | Path, resume: bool, command: list[str] | None) -> Iterator[tuple[RunDir, Path]]:
    """The run directory, locked, created or checked for a resume, and the base model (preflight first).

    Inside, a disk full or a permission error says which file, and that nothing finished is lost."""
    run = RunDir(run_dir)
    if resume and not run.exists():
        raise ValueError(f"nothing to resume at {run.root}: start the run without --resume")
    base = preflight(cfg)
    with run, sigterm_as_interrupt():  # the lock first: two processes never both create or write one run
        if not resume:
            run.create(to_dict(cfg), command or [])
        # compare through the dataclasses, so keys added to the config since the run started take their defaults
        started = json.loads(json.dumps(to_dict(config_from_manifest(run.manifest()["config"], str(run.manifest_path)))))
        if resume and started != json.loads(json.dumps(to_dict(cfg))):
            raise ValueError(f"{run.manifest_path}: the run was started with another config; resume without changes")
        if resume:
            run.clean_temps()
        try:
            yield run, base
        except OSError as e:  # disk full, permissions: say which file, and that nothing finished is lost
            raise RunError(f"{e}; finished stages and written chunks are kept: fix the cause, then "
                           f"visplay evolve --run {run.root} --resume") from e


def _run_step(step: Step, ctx: Context) -> dict:
    """One stage: skipped when done (resume), else its body, timed; its info marked done last."""
    run, name, say = ctx.run, ctx.name(step.kind), ctx.say
    if run.is_done(name):
        say(f"{name}: done (resumed)")
        publish_stage(run.root, name)  # in case a kill came between the mark and the tidy-up
        return run.stage_info(name)
    problem = run.output_problem(name)  # done once, but an output has gone since: run it again
    if problem:
        say(f"{name}: marked done but {problem}; running it again")
    run.drop_metrics(name)  # records of an attempt that was killed: this attempt logs them again
    t0 = time.time()
    info = step.body(ctx)
    info["seconds"] = round(time.time() - t0, 1)
    run.log({"stage": name, **{k: v for k, v in info.items() if isinstance(v, (int, float, str)) or v is None}})
    run.mark(name, "done", **info)  # last: the manifest is the record that the stage finished
    publish_stage(run.root, name)  # chunk parts merged into the stage's parquet go; the dataset card
    return info


def _refresh_report(run: RunDir, say: Say) -> None:
    """The HTML report is a view of the run: failing to draw it must never stop training."""
    try:
        write_report(run.root)
    except Exception as e:  # noqa: BLE001
        say(f"report not refreshed: {type(e).__name__}: {e}")


def summary_table(results: dict, run_root: str | Path | None = None, k: int | None = None) -> str:
    """The run's result: one row per evaluated model (greedy overall, on labelled and unlabelled
    levels, maj@k, the kept-label accuracy that trained it), then the gain of the final model over
    the base on the same held-out items, paired (± standard error, exact McNemar p)."""
    maj = f"maj@{k}" if k else "maj@k"
    lines = [f"{'model':<8} {'greedy':>7} {'labelled':>9} {'unlabelled':>11} {maj:>7} {'kept labels':>12}"]
    stages = RunDir(run_root).manifest()["stages"] if run_root is not None else {}
    for t, r in sorted(results.items()):
        acc = stages.get(stage_name(t, "labels"), {}).get("label_accuracy_kept")
        lines.append(f"{'base' if t == 0 else f'iter {t}':<8} {r['greedy']:>7.1%} {pct(r.get('greedy_labelled')):>9} "
                     f"{pct(r.get('greedy_unlabelled')):>11} {r['maj']:>7.1%} {pct(acc):>12}")
    last = max(results)
    if run_root is None or last == 0:
        gain = results[last]["greedy"] - results[0]["greedy"]
        lines.append(f"held-out greedy gain: {100 * gain:+.1f} points")
        return "\n".join(lines)
    root = Path(run_root)
    rd = RunDir(root)
    before = pq.read_table(rd.output(BASELINE) / "items.parquet").to_pylist()
    after = pq.read_table(rd.output(stage_name(last, "eval")) / "items.parquet").to_pylist()
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
    lines += level_lines(before, after, last)
    final = stages.get(stage_name(last, "reasoner"), {}).get("model")
    if final:
        lines.append(f"final model: {final if Path(final).is_absolute() else root / final}")
    return "\n".join(lines)


def level_lines(before: list[dict], after: list[dict], last: int) -> list[str]:
    """Per level: greedy before -> after with the paired gain, and the share of complete listings
    (the length probe: the ladder climbs only if the walks grow with the levels)."""
    out = []
    for lv in sorted({r["level"] for r in before if r.get("level") is not None}):
        b = [r for r in before if r.get("level") == lv]
        a = [r for r in after if r.get("level") == lv]
        pt = paired([r["greedy_correct"] for r in b], [r["greedy_correct"] for r in a])
        listed = [rate(rs, "listing_complete") for rs in (b, a)]
        out.append(f"  level {lv}: {rate(b, 'greedy_correct'):.1%} -> {rate(a, 'greedy_correct'):.1%} "
                   f"({100 * pt['gain']:+.1f} ± {100 * pt['se']:.1f}, n={pt['n']})"
                   + (f"; complete listings {listed[0]:.0%} -> {listed[1]:.0%}" if None not in listed else ""))
    return out


def _labelled(root: Path) -> list[int]:
    return json.loads((RunDir(root).output(BASELINE) / "summary.json").read_text()).get("labelled_levels", [])
