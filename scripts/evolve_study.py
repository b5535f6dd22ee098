"""The loop's headline table: gain per level over run seeds, against a compute-matched control and
the base committee.

For each run seed it runs `visplay evolve` into `<root>/<variant>-s<seed>/` (a finished run is read,
an interrupted one resumed); run seed s trains on its own unlabeled images (world scenes from
s x 10^6 on). Beside it: a **control**, the base model trained with supervised steps on the labelled
levels only (the pretraining recipe, fresh questions, no self-labels), as many optimizer steps as
the loop's reasoner took, at its learning rate (`<root>/control-s<seed>/`); and the **base
committee** at test time (the oracle best-of-n of its members, and the longest-chain pick a user
could run). Every model is scored greedily on a held-out set (`--eval-seed`, disjoint from the
loop's own eval items; `--eval-n` items over all levels, 300 a level): per level, mean ± SE over
seeds; then the final reasoner's gains over every reference -- the base, the control, the base
committee, and the other variants run in the same call on the same seeds (frozen questioner,
ladder) -- with item-level standard errors (a bootstrap over eval items, `visplay.eval.world.seeds_gain`).
Pick an eval seed that made no choice (docs/experiments.md keeps the table of used ones).
Run: `python scripts/evolve_study.py --root runs/study --seeds 11 12 13 --variants default "frozen questioner"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

#: Each variant's overrides; its base is its own `model`, and its control fine-tunes that base with the
#: `pretrain` recipe, so a row-walk base gets a row-walk control (pretrain.walk).
VISPLAY = ["model=tiny", "evolve.committee=[]", "evolve.agreement=answer", "evolve.band_low=0.7",
           "evolve.reasoner_objective=grpo", "evolve.coevolve=false", "evolve.images_per_iteration=128",
           "evolve.replay_images=0", "evolve.label_samples=9", "evolve.max_new_tokens=64"]
VARIANTS: dict[str, list[str]] = {
    # the preset (session 9): models/tiny-rows + tiny-rows-reversed agree on the whole trace, each
    # trains (SFT) on its own agreeing chains
    "default": ["pretrain.walk=rows"],
    # the same with the base questioner kept frozen: what the trained questioner adds to the committee recipe
    "frozen questioner": ["pretrain.walk=rows", "evolve.train_questioner=false"],
    # the same with a label rule that knows no task: the members' chains must state the same clauses, in any
    # order, numbers masked (`evolve.agreement: chain`), instead of the world's trace key and its verifier
    "chain agreement": ["pretrain.walk=rows", "evolve.agreement=chain"],
    # the curriculum read from the world's generator instead of the reasoner's answers (an oracle ablation):
    # one level per round, 6 -> 7 -> 8, with self-labelled replay of the levels below
    "ladder": ["pretrain.walk=rows", "evolve.ladder=true", "evolve.survey_images=0", "evolve.replay_images=128",
               "evolve.source_objects=[6,8]"],
    # sessions 6-7's default: VisPlay's own recipe (one model, answer vote at c >= 0.7, reasoner GRPO)
    "visplay grpo": VISPLAY,
    "no diversity penalty": VISPLAY + ["evolve.diversity_penalty=false"],
    "visplay, frozen questioner": VISPLAY + ["evolve.train_questioner=false"],
    "questioner's answers as labels": VISPLAY + ["evolve.labels=questioner"],
    # session 8: models/tiny + models/walk-random, reading-order walks
    "reading committee": ["model=tiny", "evolve.committee=[walk-random]"],
}
#: variants that get a compute-matched supervised control (each its own, matched to its own steps)
CONTROLLED = ("default", "visplay grpo", "reading committee")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def run_one(run: Path, overrides: list[str], preset: str) -> dict:
    """The run's manifest, running or resuming it first unless it already finished."""
    manifest = run / "manifest.json"
    if not (manifest.exists() and _finished(json.loads(manifest.read_text()))):
        if manifest.exists():
            argv = ["evolve", "--run", str(run), "--resume"]
        else:
            argv = ["evolve", "--preset", preset, "--run", str(run)] + [x for o in overrides for x in ("--set", o)]
        subprocess.run([sys.executable, "-m", "visplay.cli", *argv], check=True)
    return json.loads(manifest.read_text())


def _finished(manifest: dict) -> bool:
    stages = manifest["stages"]
    if any(s.get("stopped") for s in stages.values()):
        return True
    return stages.get(f"iter{manifest['config']['evolve']['iterations']}/eval", {}).get("state") == "done"


def models_of(run: Path, manifest: dict) -> dict[str, Path]:
    """{"iter<t>": reasoner dir} for every evaluated iteration of a run."""
    out = {}
    for name, info in sorted(manifest["stages"].items()):
        if name.endswith("/eval") and name != "iter0/eval" and info.get("state") == "done":
            t = name.split("/")[0]
            model = manifest["stages"][f"{t}/reasoner"]["model"]
            out[t] = Path(model) if Path(model).is_absolute() else run / model
    return out


def control(root: Path, seed: int, cfg, base: Path, manifest: dict, name: str = "control") -> Path:
    """The compute-matched supervised control for one run seed (resumable): as many optimizer steps
    of the same batch size, lr and warmup share as the run's reasoner took (GRPO updates, or SFT
    steps), on pretraining's cosine decay."""
    import math
    from dataclasses import replace

    from visplay.tiny.pretrain import pretrain

    out = root / f"{name}-s{seed}" / "model"
    if (out / "config.json").exists():
        return out
    ev, r = cfg.evolve, cfg.evolve.reasoner
    if manifest["config"]["evolve"].get("reasoner_objective") == "sft":
        rows = [info.get("train_rows") or 0 for stage, info in manifest["stages"].items() if stage.endswith("/reasoner")]
        steps = sum(math.ceil(n / ev.sft_batch_size) * ev.sft_epochs for n in rows)
        batch, lr, warmup = ev.sft_batch_size, ev.sft_lr, ev.sft_warmup
    else:
        steps, batch, lr, warmup = ev.iterations * r.steps * r.updates_per_step, r.prompts_per_step, r.lr, 0.0
    steps = max(steps, 1)
    pc = replace(cfg.pretrain, steps=steps, batch_size=batch, lr=lr, warmup_steps=round(warmup * steps),
                 questioner_share=0.0, describe_share=0.0, seed=10_000 + seed, save_steps=max(1, steps // 4))
    print(f"control s{seed}: {steps} supervised steps of batch {pc.batch_size} at lr {pc.lr} on levels "
          f"{pc.world.min_objects}-{pc.world.max_objects}", flush=True)
    return pretrain(out, pc, init=base)


def score(model: Path, cache: Path, cfg, n: int, seed: int) -> list[dict]:
    """Greedy rows of ``model`` on the study's held-out set (cached in ``cache``)."""
    from visplay.eval.world import evaluate_world
    from visplay.io import atomic_write_parquet
    from visplay.sampling.factory import open_sampler

    if cache.exists():
        return pq.read_table(cache).to_pylist()
    settings = dataclasses.replace(cfg.eval, n=n, seed=seed)
    with open_sampler(cfg.sampler, model, cfg.dtype) as sampler:
        res = evaluate_world(sampler, cfg.world, settings, labelled_levels=cfg.labelled_levels, greedy_only=True)
    rows = [{k: r[k] for k in ("id", "level", "family", "question", "truth", "greedy_output", "greedy_answer",
                               "greedy_correct")}
            for r in res.rows]
    atomic_write_parquet(cache, rows)
    return rows


def _acc(rows, levels) -> float:
    xs = [r["greedy_correct"] for r in rows if r["level"] in levels]
    return sum(xs) / len(xs) if xs else float("nan")


def _ms(xs: list[float]) -> str:
    xs = [100 * x for x in xs]
    if len(xs) < 2:
        return f"{xs[0]:.1f}" if xs else "n/a"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs) / len(xs) ** 0.5:.1f}"


def committee_baselines(members: list[list[dict]]) -> dict[str, list[dict]]:
    """What a user could do with the base committee at test time, per eval item: the oracle best-of-n
    (right when any member is right: the ceiling of every way of choosing between them) and a
    label-free pick (the answer of the member whose greedy chain is longest, the reasoner on ties --
    on the world, the one that listed the most objects)."""
    oracle, pick = [], []
    for rows in zip(*members):
        oracle.append({**rows[0], "greedy_correct": any(r["greedy_correct"] for r in rows)})
        longest = max(range(len(rows)), key=lambda i: (len(rows[i]["greedy_output"].split()), -i))
        pick.append({**rows[0], "greedy_correct": rows[longest]["greedy_correct"]})
    return {"base committee, oracle best-of-n": oracle, "base committee, longest chain": pick}


def report(scores: dict[str, dict[int, list[dict]]], labelled: set[int], references: list[str]) -> str:
    """Markdown: accuracy per level group and level for every model kind (mean ± SE over seeds), then
    the final reasoner's gains over each of ``references``, with item-level standard errors."""
    from visplay.eval.world import seeds_gain

    any_rows = next(iter(next(iter(scores.values())).values()))
    levels = sorted({r["level"] for r in any_rows})
    unl = [lv for lv in levels if lv not in labelled]
    span = lambda lv: f"L{min(lv)}-{max(lv)}" if lv else ""  # noqa: E731 -- the first three unlabelled levels, the rest
    groups = [("labelled", labelled & set(levels)), ("unlabelled", set(unl)),
              (span(unl[:3]), set(unl[:3])), (span(unl[3:]), set(unl[3:]))]
    groups = [(name, lv) for name, lv in groups if lv]
    cols = groups + [(f"L{lv}", {lv}) for lv in levels]
    seeds = sorted(scores["final"])
    lines = ["| model | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for kind in [k for k in scores if k != "final"]:
        lines.append(f"| {kind} | " + " | ".join(_ms([_acc(scores[kind][s], lv) for s in scores[kind]]) for _, lv in cols)
                     + " |")
    lines += ["", f"Gains of the final reasoner (greedy, points) over seeds {seeds}: mean over seeds ± item-level SE "
              "(bootstrap over eval items, each item's paired differences averaged over the seeds first); per seed:"]
    for ref in references:
        if ref not in scores:
            continue
        parts = []
        for name, lv in groups:
            if name == "unlabelled":
                continue
            pairs = [([r["greedy_correct"] for r in scores[ref][s] if r["level"] in lv],
                      [r["greedy_correct"] for r in scores["final"][s] if r["level"] in lv])
                     for s in seeds if s in scores[ref]]
            g = seeds_gain(pairs)
            parts.append(f"{name} **{100 * g['gain']:+.1f} ± {100 * g['se']:.1f}** "
                         f"({', '.join(f'{100 * x:+.1f}' for x in g['per_seed'])}; n={g['n']})")
        lines.append(f"- vs {ref}: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> None:
    from visplay.config import load_config, resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/study")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-control", action="store_true", help="skip the compute-matched supervised control")
    ap.add_argument("--eval-n", type=int, default=3000, help="items of the study's own held-out set (all levels: "
                    "3000 = 300 a level)")
    ap.add_argument("--eval-seed", type=int, default=7, help="its world seed (the loop's own eval uses eval.seed)")
    ap.add_argument("--final-only", action="store_true", help="score only each run's final reasoner (the control "
                    "still trains), not every iteration's")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every run")
    args = ap.parse_args()
    root = Path(args.root)
    held = lambda kind: root / "heldout" / f"{kind}-n{args.eval_n}-seed{args.eval_seed}.parquet"  # noqa: E731
    tables, variants = [], {}
    for name in args.variants:
        cfg = load_config(args.preset, VARIANTS[name] + args.overrides)
        base = resolve_model(cfg.model)
        labelled = set(cfg.labelled_levels)
        scores: dict[str, dict[int, list[dict]]] = {"base": {}}
        members = [resolve_model(m) for m in cfg.evolve.committee if not m.startswith("url=")]
        for seed in args.seeds:
            run = root / f"{slug(name)}-s{seed}"
            manifest = run_one(run, VARIANTS[name] + [f"evolve.seed={seed}"] + args.overrides, args.preset)
            scores["base"][seed] = score(base, held(f"base-{base.name}"), cfg, args.eval_n, args.eval_seed)
            if members:  # the base committee at test time: the baselines a user could run instead of the loop
                rows = [scores["base"][seed]] + [score(m, held(f"base-{m.name}"), cfg, args.eval_n, args.eval_seed)
                                                 for m in members]
                for kind, picked in committee_baselines(rows).items():
                    scores.setdefault(kind, {})[seed] = picked
            models = models_of(run, manifest)
            if name not in CONTROLLED or args.final_only:  # an ablation: its final reasoner is what the table compares
                models = dict([max(models.items(), key=lambda kv: int(kv[0].removeprefix("iter")))])
            for t, model in models.items():
                scores.setdefault(t, {})[seed] = score(model, held(f"{run.name}-{t}"), cfg, args.eval_n, args.eval_seed)
                scores.setdefault("final", {})[seed] = scores[t][seed]  # the run's last evaluated reasoner
            if name in CONTROLLED and not args.no_control:
                cname = "control" if name == "default" else f"control-{slug(name)}"
                model = control(root, seed, cfg, base, manifest, cname)
                scores.setdefault("control", {})[seed] = score(model, held(f"{cname}-s{seed}"), cfg, args.eval_n,
                                                               args.eval_seed)
        variants[name] = (scores, labelled, base)
    for name, (scores, labelled, base) in variants.items():
        # the other variants' final reasoners on the same seeds (frozen questioner, ladder) are references too
        others = {o: sc["final"] for o, (sc, _, _) in variants.items()
                  if o != name and set(sc["final"]) >= set(scores["final"])}
        if "control" not in scores:  # an ablation is held against the control of a variant with the same base
            scores = {**scores, **next(({"control": sc["control"]} for sc, _, b in variants.values()
                                        if b == base and "control" in sc), {})}
        refs = ["base", "control", *[k for k in scores if k.startswith("base committee")], *others]
        table = f"## {name}\n\n" + report({**scores, **others}, labelled, refs)
        print("\n" + table, flush=True)
        tables.append(table)
    out = "\n\n".join(tables)
    (root / "study.md").write_text(out + "\n")
    print("\n" + out)


if __name__ == "__main__":
    main()
