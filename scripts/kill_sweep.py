"""Kill `visplay evolve` at every stage boundary and at random points inside every stage; resume; compare.

Builds the kill points (`tests/faults.py` `KillPoint`): the moment each stage is recorded
done, GRPO checkpoints complete and half-written, final model folders mid-save, chunk parts of
the generation and labeling stages, random fractions of every stage (seeded), and Ctrl-C / SIGTERM
at a few of them. Points are packed into chains (at most one per stage, in stage order): each
chain starts a fresh run, strikes its points one after another (resuming after each kill), resumes
to the end and is compared with one uncrashed reference run (rows lost / duplicated per stage
output, GRPO steps logged once, models load, no temp files, no orphan processes, lock free).
Stops starting chains when the time budget would be exceeded. Prints a summary and writes
``OUT/summary.json``; exits 1 if any kill point found a problem.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/kill_sweep.py --out runs/kill-sweep --minutes 20
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from visplay.run.stages import ITERATION_STAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers below live there
import faults  # noqa: E402
from faults import KillPoint  # noqa: E402

ORDER = {"frac": 0, "part": 1, "checkpoint": 1, "checkpoint-partial": 1, "saving": 2, "done": 3}


def kill_points(stages: list[str], seed: int, random_per_stage: int) -> list[KillPoint]:
    rng = random.Random(seed)
    points = [KillPoint(s, "done") for s in stages]  # boundaries (the last lands in the report/exit)
    for s in stages:
        name = s.split("/")[1]
        if name in faults.MODEL_STAGES:
            points += [KillPoint(s, "checkpoint", 1), KillPoint(s, "checkpoint-partial", 2), KillPoint(s, "saving")]
        if name in faults.CHUNKED_STAGES:
            points += [KillPoint(s, "part", 1), KillPoint(s, "part", 2)]
        points += [KillPoint(s, "frac", round(rng.uniform(0.05, 0.95), 2)) for _ in range(random_per_stage)]
    q, g, lab, r, ev = (next(s for s in stages if s == f"iter1/{k}") for k in ITERATION_STAGES)
    points += [
        KillPoint(q, "frac", 0.5, signal.SIGINT), KillPoint(lab, "part", 1, signal.SIGINT),
        KillPoint(r, "checkpoint", 1, signal.SIGINT), KillPoint(ev, "frac", 0.5, signal.SIGINT),
        KillPoint(g, "part", 1, signal.SIGTERM), KillPoint(r, "frac", 0.5, signal.SIGTERM),
    ]
    return points


def chains(points: list[KillPoint], stages: list[str], length: int) -> list[list[KillPoint]]:
    """Pack points into chains with strictly increasing stage index (so each kill lands later)."""
    todo = sorted(points, key=lambda p: (stages.index(p.stage), ORDER[p.at], p.value))
    out: list[list[KillPoint]] = []
    for p in todo:
        for c in out:
            if len(c) < length and stages.index(c[-1].stage) < stages.index(p.stage):
                c.append(p)
                break
        else:
            out.append([p])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/kill-sweep", help="working directory (replaced)")
    ap.add_argument("--minutes", type=float, default=20.0, help="time budget; no chain starts past it")
    ap.add_argument("--seed", type=int, default=0, help="seed for the random kill fractions")
    ap.add_argument("--random-per-stage", type=int, default=2, help="random kill points inside each stage")
    ap.add_argument("--chain-length", type=int, default=6, help="kill points per run at most")
    ap.add_argument("--model", default="tiny", help="base model (default: the shipped tiny model)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one process may run (a loaded machine is slow)")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    overrides = faults.fast_overrides(args.model)
    stages = faults.stage_names(1)
    print(f"reference run ({len(stages)} stages) ...", flush=True)
    timeline = faults.reference_run(out / "reference", overrides, out / "reference.log", timeout=args.timeout)
    print("  " + ", ".join(f"{s} done at {timeline.done_at[s]:.1f}s" for s in timeline.stages), flush=True)
    plan = chains(kill_points(stages, args.seed, args.random_per_stage), stages, args.chain_length)
    print(f"{sum(map(len, plan))} kill points in {len(plan)} chains, budget {args.minutes:g} min", flush=True)

    results, per_chain = [], []
    for i, chain_points in enumerate(plan):
        elapsed = time.monotonic() - t0
        longest = max((c["seconds"] for c in per_chain), default=120.0)
        if elapsed + longest > args.minutes * 60:
            print(f"budget reached: {len(plan) - i} chain(s) not run", flush=True)
            break
        c0 = time.monotonic()
        try:
            res = faults.run_chain(out / f"chain{i:02d}", out / "reference", chain_points, overrides,
                                   out / f"chain{i:02d}.log", timeline, timeout=args.timeout)
        except TimeoutError as e:  # counted as a failed chain, the sweep goes on
            per_chain.append({"chain": i, "seconds": round(time.monotonic() - c0, 1), "resumed_ok": False,
                              "lost": None, "duplicated": None, "foreign": None, "problems": [str(e)]})
            print(f"chain {i:02d}: PROBLEM {e}", flush=True)
            continue
        cmp = res.comparison
        per_chain.append({
            "chain": i, "seconds": round(time.monotonic() - c0, 1), "resumed_ok": res.resumed_ok,
            "lost": sum(cmp.lost.values()) if cmp else None, "duplicated": sum(cmp.duplicated.values()) if cmp else None,
            "foreign": sum(cmp.foreign.values()) if cmp else None, "problems": cmp.problems if cmp else ["did not finish"],
        })
        for k in res.kills:
            results.append({"chain": i, "point": k.point.label, "reached": k.reached, "landed": k.landed, "note": k.note,
                            "exit_code": k.exit_code, "orphans": k.orphans, "problems": k.problems,
                            "seconds": round(k.seconds, 1)})
            flag = "ok" if k.ok else "PROBLEM " + "; ".join(k.problems + [f"orphans {k.orphans}"] * bool(k.orphans))
            print(f"  chain {i:02d}  {k.point.label:<44} landed in {k.landed or '-':<18} exit {k.exit_code}  {flag}"
                  + (f"  ({k.note})" if k.note else ""), flush=True)
        verdict = "ok" if res.ok else f"PROBLEM {per_chain[-1]}"
        print(f"chain {i:02d}: resumed {'ok' if res.resumed_ok else 'FAILED'}, {per_chain[-1]['seconds']}s, {verdict}",
              flush=True)

    tried = [r for r in results if r["reached"]]
    sigs = Counter(r["point"].split()[0] for r in tried)
    landed = Counter(r["landed"] for r in tried)
    clean = [r for r in tried if not r["point"].startswith("SIGKILL")]
    summary = {
        "kill_points_tried": len(tried), "not_reached": len(results) - len(tried), "by_signal": dict(sigs),
        "landed_in": dict(landed), "chains": len(per_chain),
        "chains_resumed_ok": sum(c["resumed_ok"] for c in per_chain),
        "rows_lost": sum(c["lost"] or 0 for c in per_chain), "rows_duplicated": sum(c["duplicated"] or 0 for c in per_chain),
        "rows_foreign": sum(c["foreign"] or 0 for c in per_chain),
        "clean_stops_ok": sum(not r["problems"] for r in clean), "clean_stops": len(clean),
        "orphan_processes": sum(len(r["orphans"]) for r in results),
        "kill_point_problems": sum(bool(r["problems"]) for r in results),
        "chain_problems": sum(bool(c["problems"]) for c in per_chain),
        "minutes": round((time.monotonic() - t0) / 60, 1), "command": " ".join(["python", *sys.argv]),
    }
    (out / "summary.json").write_text(json.dumps({"summary": summary, "chains": per_chain, "kills": results}, indent=2))
    print("\nkill sweep summary")
    print(f"  kill points tried: {summary['kill_points_tried']} ({', '.join(f'{k} {v}' for k, v in sigs.items())}); "
          f"not reached (run ended first): {summary['not_reached']}")
    print("  landed in: " + ", ".join(f"{k} {v}" for k, v in sorted(landed.items())))
    print(f"  resumed OK: {summary['chains_resumed_ok']}/{summary['chains']} runs "
          f"({summary['kill_points_tried']} kills, each followed by a resume)")
    print(f"  rows lost: {summary['rows_lost']}, duplicated: {summary['rows_duplicated']}, "
          f"foreign: {summary['rows_foreign']} (questions, labels, evaluations vs the uncrashed reference)")
    print(f"  clean stops (SIGINT/SIGTERM: exit 130 + resume hint): {summary['clean_stops_ok']}/{summary['clean_stops']}")
    print(f"  orphan processes: {summary['orphan_processes']}; kill points with problems: "
          f"{summary['kill_point_problems']}; runs with problems after resume: {summary['chain_problems']}")
    print(f"  {summary['minutes']} min; details in {out / 'summary.json'}")
    ok = (summary["kill_point_problems"] == 0 and summary["chain_problems"] == 0 and summary["orphan_processes"] == 0
          and summary["chains_resumed_ok"] == summary["chains"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
