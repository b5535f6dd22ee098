"""The loop's headline table: held-out gain over run seeds, with the ablations beside it.

Runs `visplay evolve` once per (variant, seed) into `<root>/<variant>-s<seed>/` (a finished run is
read, an interrupted one resumed), then prints one markdown row per variant: base and final greedy,
the gain (mean ± sd over seeds), maj@k - greedy, the iteration-1 pseudo-label accuracy of kept
labels, and stage minutes. Each run sees the same held-out items (eval.seed is fixed), so gains are
paired. Run: `python scripts/evolve_study.py --root runs/study --seeds 0 1 2 [--variants default]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no diversity penalty": ["evolve.diversity_penalty=false"],
    "frozen questioner": ["evolve.train_questioner=false"],
    "questioner's answers as labels": ["evolve.labels=questioner"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def run_one(run: Path, overrides: list[str], preset: str) -> dict:
    """The run's manifest stages, running or resuming it first unless it already finished."""
    manifest = run / "manifest.json"
    if manifest.exists() and _finished(json.loads(manifest.read_text())):
        return json.loads(manifest.read_text())["stages"]
    if manifest.exists():
        argv = ["evolve", "--run", str(run), "--resume"]
    else:
        argv = ["evolve", "--preset", preset, "--run", str(run)] + [x for o in overrides for x in ("--set", o)]
    subprocess.run([sys.executable, "-m", "visplay.cli", *argv], check=True)
    return json.loads(manifest.read_text())["stages"]


def _finished(manifest: dict) -> bool:
    last = f"iter{manifest['config']['evolve']['iterations']}/eval"
    return manifest["stages"].get(last, {}).get("state") == "done"


def summarize(stages: dict) -> dict:
    evals = {int(k[4:].split("/")[0]): v for k, v in stages.items() if k.endswith("/eval")}
    last = max(evals)
    labels = stages.get("iter1/labels", {})
    return {"base": evals[0]["greedy"], "final": evals[last]["greedy"], "gain": evals[last]["greedy"] - evals[0]["greedy"],
            "headroom": evals[0]["maj"] - evals[0]["greedy"], "label_acc": labels.get("label_accuracy_kept"),
            "minutes": sum(s.get("seconds", 0) for s in stages.values()) / 60}


def table(results: dict[str, list[dict]]) -> str:
    def ms(xs, scale=100.0, fmt="{:.1f}"):
        xs = [x * scale for x in xs if x is not None]
        if not xs:
            return "n/a"
        sd = f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
        return fmt.format(statistics.mean(xs)) + sd

    lines = ["| variant | seeds | base greedy % | final greedy % | gain (points) | base maj − greedy | "
             "iter-1 kept-label accuracy % | stage minutes |", "|---|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        lines.append(f"| {name} | {len(rs)} | {ms([r['base'] for r in rs])} | {ms([r['final'] for r in rs])} | "
                     f"**{ms([r['gain'] for r in rs])}** | {ms([r['headroom'] for r in rs])} | "
                     f"{ms([r['label_acc'] for r in rs])} | {ms([r['minutes'] for r in rs], 1.0)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/study")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every run")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {}
    for name in args.variants:
        for seed in args.seeds:
            run = Path(args.root) / f"{slug(name)}-s{seed}"
            stages = run_one(run, VARIANTS[name] + [f"evolve.seed={seed}"] + args.overrides, args.preset)
            results.setdefault(name, []).append(summarize(stages))
            print(table(results), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
