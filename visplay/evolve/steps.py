"""The body of each stage in `visplay.run.stages.STAGES`: ``run_<kind>(ctx) -> info``; `STEPS` pairs
each stage with its body, in order, for `visplay.evolve.loop`.

A body reads its inputs from the run directory (`Context`; models of earlier stages come from the
manifest) and hands the heavy work to the module that owns it: a GRPO phase to
`visplay.evolve.grpo` (or, with ``hardware.launcher``, to its workers), the sampling stages to
`visplay.evolve.sampling_stages`, the reasoner's SFT and the committee's co-evolution to
`visplay.evolve.committee`, the eval to `visplay.eval.world`.
Workers never call back into this file. The reasoner's objective (``evolve.reasoner_objective``)
is chosen in `run_reasoner`, from `REASONER_OBJECTIVES`.
Test: `pytest tests/test_evolve.py tests/test_scale.py tests/test_shards.py`.
"""

from __future__ import annotations

import time

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from visplay.eval.world import evaluate_world, level_groups, write_eval
from visplay.evolve import committee, curriculum, grpo
from visplay.evolve.context import Context, open_images, stage_params, take_images
from visplay.evolve.launch import launch_phase
from visplay.evolve.rows import (generate_questions, label_accuracy, level_mix, questioner_dataset, reasoner_dataset,
                                 reasoner_rows, skip_reasons, world_scene)
from visplay.evolve.sampling_stages import run_stage, stage_items
from visplay.io import atomic_write_parquet
from visplay.run.stages import BY_KIND, ITERATION_STAGES, Stage


def run_survey(ctx: Context) -> dict:
    """The label-free curriculum's survey (`visplay.evolve.curriculum`), once, before iteration 1:
    the base reasoner's greedy answer to one question about each image of the pool, written to
    ``survey.parquet``; a finished survey is read back (resume)."""
    ev, say = ctx.cfg.evolve, ctx.say
    rows = curriculum.read_survey(ctx.run.survey_path)
    if rows is None:
        t0 = time.time()
        items = curriculum.pool(open_images(ctx.cfg, 1), ev.survey_images)
        level = lambda image_id: getattr(world_scene(image_id, ctx.cfg.source_world), "level", None)  # noqa: E731
        params = ev.params(1, temperature=0, top_k=0, top_p=1.0, seed=ev.seed)
        with ctx.sampler(ctx.base, stage="survey") as sampler:
            rows = curriculum.survey(sampler, items, params, level)
        curriculum.write_survey(ctx.run.survey_path, rows)
        ctx.run.log({"stage": "survey", "images": len(rows), "seconds": round(time.time() - t0, 1)})
    words = sorted(r["difficulty"] for r in rows)
    say(f"survey: {len(rows)} unlabeled images ordered by the base reasoner's answer length "
        f"({words[0]}-{words[-1]} words, median {words[len(words) // 2]}); each iteration takes the easiest unseen")
    return {"images": len(rows), "median_difficulty": words[len(words) // 2]}


def run_questioner(ctx: Context) -> dict:
    """Q_t = GRPO(Q_{t-1}) on unseen images; reward from the frozen reasoner R_{t-1}."""
    ev = ctx.cfg.evolve
    if not ev.train_questioner:
        return {"model": str(ctx.model("questioner", ctx.t - 1)), "skipped": "frozen questioner (ablation)"}
    items, skipped = take_images(ctx, ev.questioner_images)
    # here, or on the launcher's GPUs/nodes (visplay/evolve/worker.py), which fetch the images themselves
    stage = ctx.name("questioner")
    guard = grpo.logged_phase(ctx, "questioner", launch_phase(ctx.cfg, ctx.run, stage) if ctx.cfg.hardware.launcher
                              else grpo.train_phase(ctx, "questioner", questioner_dataset(items)))
    model, drift = ctx.run.output(stage), None
    if ev.min_valid_share is not None:
        model, drift = kept_questioner(ctx, items, model)
    return {"model": str(model), "images": len(items), "skipped_images": skipped, "guard": guard,
            **({"valid_share": drift} if drift else {})}


def kept_questioner(ctx: Context, items, trained: Path) -> tuple[Path, dict]:
    """The drift guard, label-free: the trained questioner, unless its share of well-formed questions
    on the phase's own images fell under `evolve.min_valid_share` and under its predecessor's --
    then the predecessor (GRPO can drift into degenerate tag sequences, which cost the round its
    questions: docs/experiments.md, session 11). (model, the two shares and the verdict)."""
    params, floor = stage_params(ctx.cfg, ctx.t), ctx.cfg.evolve.min_valid_share

    def share(model: Path) -> float:
        with ctx.sampler(model, stage=ctx.name("questioner")) as sampler:
            rows = generate_questions(sampler, items, 4, params, world=None)
        return sum(r["valid"] for r in rows) / max(1, len(rows))

    trained_share = share(trained)
    if trained_share >= floor:  # the usual case: the predecessor is not sampled
        return trained, {"trained": trained_share, "kept": "trained"}
    prev = ctx.model("questioner", ctx.t - 1)
    shares = {"trained": trained_share, "previous": share(prev)}
    if shares["trained"] >= shares["previous"]:
        return trained, {**shares, "kept": "trained"}
    ctx.say(f"{ctx.name('questioner')}: {shares['trained']:.1%} of the trained questioner's questions are well formed "
            f"(previous {shares['previous']:.1%}, floor {floor:.1%}): kept the previous one")
    return prev, {**shares, "kept": "previous"}


def run_questions(ctx: Context) -> dict:
    """Q_t writes k questions per unseen image."""
    items, skipped = take_images(ctx, ctx.cfg.evolve.images_per_iteration, replay=True)
    rows = run_stage(ctx, "questions", items)
    atomic_write_parquet(ctx.run.output(ctx.name("questions")), rows)
    valid = sum(r["valid"] for r in rows)
    held = ctx.cfg.evolve.advance_kept_share is not None
    level = ctx.cfg.source_world_at(ctx.rung()).min_objects if held else None
    ctx.say(f"{ctx.name('questions')}: {len(rows)} questions for {len(items)} images, {valid / len(rows):.0%} valid"
            + (f" (ladder level {level})" if held else ""))
    return {"rows": len(rows), "valid": valid, "image_ids": sorted({r["image_id"] for r in rows}),
            "skipped_images": skipped, **({"ladder_level": level} if held else {})}


def run_labels(ctx: Context) -> dict:
    """The committee (R_{t-1}, then `evolve.committee`) samples m answers per question; the vote's
    label is the silver label; questions whose agreement is in the band are kept."""
    rows = stage_items(ctx, "labels")
    labeled = run_stage(ctx, "labels", rows)
    atomic_write_parquet(ctx.run.output(ctx.name("labels")), labeled)
    stats, mix = label_accuracy(labeled), level_mix(labeled)
    by_rule = ", ".join(f"by {rule} agreement {n['labeled']} labelled, {n['kept']} kept"
                        for rule, n in stats["by_rule"].items())
    ctx.say(f"{ctx.name('labels')}: kept {stats['n_kept']}/{len(rows)}" + (f" ({by_rule})" if by_rule else "")
            + "; pseudo-label accuracy (kept) "
            f"{pct(stats['label_accuracy_kept'])}"
            + ("; kept by level " + " ".join(f"{lv}:{m['kept']}/{m['valid']}" for lv, m in mix.items()) if mix else ""))
    return {**stats, "skipped": skip_reasons(labeled), "by_level": mix}


def reasoner_grpo(ctx: Context, rows: list[dict]) -> dict:
    """R_t = GRPO(R_{t-1}) with the kept labels as the accuracy reward's column."""
    stage, ds = ctx.name("reasoner"), reasoner_dataset(rows, grpo.label_column(ctx.cfg.evolve))
    guard = grpo.logged_phase(ctx, "reasoner", launch_phase(ctx.cfg, ctx.run, stage) if ctx.cfg.hardware.launcher
                              else grpo.train_phase(ctx, "reasoner", ds))
    return {"model": str(ctx.run.output(stage)), "train_rows": len(ds), "guard": guard}


#: ``evolve.reasoner_objective`` -> how R_t is trained on the kept label rows (the stage's record back).
REASONER_OBJECTIVES: dict[str, Callable[[Context, list[dict]], dict]] = {"grpo": reasoner_grpo, "sft": committee.train}


def run_reasoner(ctx: Context) -> dict:
    """R_t from R_{t-1} on the kept silver labels, by `REASONER_OBJECTIVES` (unless the stop signal
    fired or nothing was kept: then R_{t-1} is carried over, and with a committee the run ends)."""
    ev, stage, prev = ctx.cfg.evolve, ctx.name("reasoner"), ctx.model("reasoner", ctx.t - 1)
    labels = ctx.run.stage_info(ctx.name("labels"))
    stop = stop_signal(labels, ev.stop_agreement)
    if stop:
        ctx.say(f"{stage}: stopped before training: {stop}; the reasoner is carried over unchanged")
        return {"model": str(prev), "skipped": stop, "train_rows": 0, "stopped": True}
    if ev.ends_when_nothing_kept and labels.get("n_kept", 0) < ev.min_kept:  # nothing further agrees
        why = (f"the committee agreed on no question of iteration {ctx.t}" if not labels.get("n_kept") else
               f"the committee kept {labels['n_kept']} labels in iteration {ctx.t}, under evolve.min_kept {ev.min_kept}")
        ctx.say(f"{stage}: stopped: {why}; the run ends with the reasoner of iteration {ctx.t - 1}")
        return {"model": str(prev), "skipped": why, "train_rows": 0, "stopped": True}
    rows = reasoner_rows(ctx.run.root, ctx.t, ev.accumulate_labels)
    if not any(r["kept"] for r in rows):
        ctx.say(f"{stage}: no question kept in the agreement band; the reasoner is carried over unchanged")
        return {"model": str(prev), "skipped": "no kept questions", "train_rows": 0}
    return REASONER_OBJECTIVES[ev.reasoner_objective](ctx, rows)


def run_eval(ctx: Context) -> dict:
    """Held-out accuracy of R_t (the base model at t = 0) on world seeds never used in training."""
    cfg, stage, e = ctx.cfg, ctx.name("eval"), ctx.cfg.eval
    model_dir = ctx.model("reasoner", ctx.t)
    with ctx.sampler(model_dir, progress=True, stage=stage) as sampler:
        result = evaluate_world(sampler, cfg.world, e, grader=ctx.grader, labelled_levels=cfg.labelled_levels)
    write_eval(result, ctx.run.output(stage), {"model": str(model_dir)})
    o = result.summary["overall"]
    info = {"greedy": o["greedy"], "maj": o["maj"], "pass": o["pass"], "n": o["n"],
            "by_level": {lv: {k: v.get(k) for k in ("n", "greedy", "maj", "listing_complete")}
                         for lv, v in result.summary["by_level"].items()}}
    parts = []
    for name, levels in level_groups({r["level"] for r in result.rows}, cfg.labelled_levels).items():
        rs = [r["greedy_correct"] for r in result.rows if r["level"] in levels]
        if rs:
            info[f"greedy_{name}"], info[f"n_{name}"] = sum(rs) / len(rs), len(rs)
            parts.append(f"{name} {info[f'greedy_{name}']:.1%}")
    ctx.say(f"{stage}: greedy {o['greedy']:.1%}" + (f" ({', '.join(parts)})" if parts else "")
            + f", maj@{e.k} {o['maj']:.1%}, pass@{e.k} {o['pass']:.1%}")
    return info


@dataclass(frozen=True)
class Step:
    """A stage of the loop and the body that runs it."""

    stage: Stage
    body: Callable[[Context], dict]

    @property
    def kind(self) -> str:
        return self.stage.kind


#: One iteration of the loop, in `visplay.run.stages.STAGES` order, each stage with its body.
STEPS: tuple[Step, ...] = tuple(Step(BY_KIND[kind], body) for kind, body in (
    ("questioner", run_questioner), ("questions", run_questions), ("labels", run_labels),
    ("reasoner", run_reasoner), ("eval", run_eval)))
#: The step before the first iteration: the base model's held-out accuracy.
BASELINE_STEP = Step(BY_KIND["eval"], run_eval)
assert tuple(s.kind for s in STEPS) == ITERATION_STAGES, "each stage of run.stages.STAGES needs its body here, in order"


def stop_signal(labels_info: dict, stop_agreement: float | None) -> str | None:
    """Label-free collapse warning: when the reasoner's votes on fresh unlabeled questions agree
    this much, self-labels stop carrying information (min(c, 1-c) ~ 0) and the agreement filter
    starts letting consistent errors in (docs/experiments.md, session 6). None = keep going."""
    agreement = labels_info.get("mean_agreement")
    if stop_agreement is None or agreement is None or agreement < stop_agreement:
        return None
    return f"mean agreement {agreement:.2f} >= evolve.stop_agreement {stop_agreement}"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"
