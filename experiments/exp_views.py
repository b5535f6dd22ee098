"""Does a second view of the image catch the errors two committee members share? Issue 34's "views" direction.

Both base members answer the held-out items of levels 6-8 greedily on the image as drawn and on two views that
keep every count question's answer: the image's pixels mirrored left-right (what a user could do to any photo),
and the scene re-drawn with its columns mirrored (the world's own conventions kept: cell bars stay on the left,
so this view needs the scene, not just the image). Prints each model's accuracy per view, then, for labels kept
when both members' answers (and, with ``chain``, their `chain_key`) agree on the drawn image and on every extra
view, how many are kept and how many are right.

Run: ``python experiments/exp_views.py --eval-seed 1`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict

from PIL import ImageOps

MEMBERS = ("tiny-rows", "tiny-rows-reversed")


def main() -> None:
    from visplay.answers import Grader
    from visplay.answers.committee import chain_key
    from visplay.config import load_config, resolve_model
    from visplay.eval.world import eval_items
    from visplay.roles.parsing import parse_reasoner
    from visplay.roles.prompts import reasoner_messages
    from visplay.sampling.base import Prompt
    from visplay.sampling.factory import open_sampler
    from visplay.worlds.questions import grade
    from visplay.worlds.scene import Obj

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=1500, help="held-out items over all levels; levels 6-8 are kept")
    args = ap.parse_args()
    cfg = load_config("tiny")
    items = [(s, q) for s, q in eval_items("heldout", args.n, cfg.world, tuple(cfg.eval.families), args.eval_seed)
             if s.level in (6, 7, 8)]
    mirrored = lambda s: dataclasses.replace(  # noqa: E731
        s, objects=tuple(Obj(o.row, s.grid - 1 - o.col, o.colour, o.shape, o.size) for o in s.objects))
    views = {"drawn": lambda s: s.render(), "pixels mirrored": lambda s: ImageOps.mirror(s.render()),
             "scene mirrored": lambda s: mirrored(s).render()}
    out = {}
    greedy = cfg.eval.params(1, temperature=0, top_k=0, top_p=1.0)
    for m in MEMBERS:
        with open_sampler(cfg.sampler, resolve_model(m), cfg.dtype) as sampler:
            for v, view in views.items():
                gen = sampler.generate([Prompt(reasoner_messages(q.text), (view(s),)) for s, q in items], greedy)
                out[m, v] = [g[0] for g in gen]
    ans = {k: [parse_reasoner(o).answer for o in outs] for k, outs in out.items()}
    with Grader(workers=0) as grader:
        right = {k: [grade(q.text, a, q.answer, grader) for (_, q), a in zip(items, A)] for k, A in ans.items()}
    for k in ans:
        print(f"{k[0]:20s} {k[1]:16s} accuracy {100 * sum(right[k]) / len(items):.1f} % (n={len(items)})")
    for chain in (False, True):
        for extra in ((), ("pixels mirrored",), ("scene mirrored",)):
            by = defaultdict(lambda: [0, 0])
            for i, (s, _) in enumerate(items):
                label = ans[MEMBERS[0], "drawn"][i]
                if label is None or any(ans[m, v][i] != label for m in MEMBERS for v in ("drawn", *extra)):
                    continue
                if chain and len({chain_key(out[m, "drawn"][i], ans[m, "drawn"][i]) for m in MEMBERS}) != 1:
                    continue
                for key in (f"L{s.level}", "all"):
                    by[key][0] += 1
                    by[key][1] += right[MEMBERS[0], "drawn"][i]
            rule = ("chains" if chain else "answers") + " agree" + "".join(f" + {v}" for v in extra)
            print(f"{rule:40s}: " + ", ".join(f"{k} {n} kept {100 * c / n:.1f} %" for k, (n, c) in sorted(by.items())))


if __name__ == "__main__":
    main()
