"""Wall-clock of an embedded self-evolution run (presets/tiny.yaml, or tiny-long), stage by stage.

Runs `visplay evolve` (``--preset``) into a fresh run directory (``--run DIR``; one that already holds a run is
read, not rerun) and prints each stage's seconds from the manifest (and the curriculum's survey from
metrics.jsonl), the total, the wall clock and
the preset's target (`TARGET_S`: 10 minutes for the default, 30 for tiny-long) side by side. A read run is
held against the target of the preset it ran. Time it alone: anything else on the cores slows it.
Run: `python benchmarks/bench_evolve.py [--preset tiny-long] [--run runs/bench] [--set key=value ...]`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from visplay.cli import main as visplay

#: Each embedded preset's time budget on 2 cores, in seconds (issues 33 and 37).
TARGET_S = {"tiny": 600, "tiny-long": 1800}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="the run directory (default runs/bench-<time>); an existing run is read")
    ap.add_argument("--preset", default="tiny", choices=sorted(TARGET_S))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    run = Path(args.run or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    fresh = not (run / "manifest.json").exists()
    t0 = time.time()
    if fresh:
        argv = ["evolve", "--preset", args.preset, "--run", str(run)] + [x for o in args.overrides for x in ("--set", o)]
        if visplay(argv) != 0:
            raise SystemExit("evolve failed")
    wall = time.time() - t0
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    preset = _preset_of(manifest) if not fresh else args.preset
    target = TARGET_S[preset]
    print(f"{'stage':<20} {'seconds':>8}")
    for name, info in stages.items():
        print(f"{name:<20} {info.get('seconds', float('nan')):>8.1f}")
    survey = [r["seconds"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r.get("stage") == "survey" and "seconds" in r]  # the curriculum's survey: before iteration 1
    if survey:
        print(f"{'survey':<20} {survey[-1]:>8.1f}")
    total = sum(i.get("seconds", 0) for i in stages.values()) + (survey[-1] if survey else 0.0)
    print(f"{'total (stages)':<20} {total:>8.1f}   target ({preset}) {target} s -> {total / target:.2f} of the budget")
    if fresh:
        print(f"{'wall clock':<20} {wall:>8.1f}   target ({preset}) {target} s -> {wall / target:.2f} of the budget")


def _preset_of(manifest: dict) -> str:
    """The embedded preset a recorded run ran (its command's ``--preset``; none given: the default)."""
    cmd = manifest.get("command") or []
    given = next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a in ("--preset", "--config")), "tiny")
    return given if given in TARGET_S else "tiny"


if __name__ == "__main__":
    main()
