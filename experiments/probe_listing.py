"""Probe (docs/experiments.md, session 8): how many objects does a model's greedy walk list, per level,
and which ones (by reading-order position) does it drop? `visplay eval` reports the share of complete
listings per level; this adds the histogram of listed counts and the dropped positions.

    python experiments/probe_listing.py --model models/tiny --level 7 --n 100
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

from visplay.models import denormals_flushed, load_model
from visplay.roles.prompts import reasoner_messages
from visplay.sampling.base import Prompt, SamplingParams
from visplay.sampling.hf import TransformersSampler
from visplay.worlds.questions import make_question
from visplay.worlds.trace import listed_objects
from visplay.worlds.scene import WorldConfig, make_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--level", type=int, required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    world = WorldConfig(min_objects=args.level, max_objects=args.level)
    scenes = [make_scene("heldout", 5 * 10**6 + i, world) for i in range(args.n)]
    questions = [make_question(s, random.Random(f"d{i}"), ("count", "sum")) for i, s in enumerate(scenes)]
    model, processor = load_model(args.model)
    with denormals_flushed():
        outs = TransformersSampler(model, processor).generate(
            [Prompt(reasoner_messages(q.text), (s.render(),)) for s, q in zip(scenes, questions)],
            SamplingParams(temperature=0, top_k=0, max_new_tokens=args.max_new_tokens))
    counts, dropped, exact = Counter(), Counter(), 0
    for scene, out in zip(scenes, outs):
        listed = [x.split()[0] for x in listed_objects(out[0]) or ()]
        truth = [o.cell for o in scene.objects]
        counts[len(listed)] += 1
        dropped.update(i for i, cell in enumerate(truth) if cell not in listed)
        exact += sorted(listed) == sorted(truth)
    print(f"level {args.level}: listed-count histogram {sorted(counts.items())}; exact listing {exact}/{args.n}; "
          f"dropped reading-order positions {sorted(dropped.items())}")


if __name__ == "__main__":
    main()
