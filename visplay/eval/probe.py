"""Trace probe: has the model learned the two decisive steps of the marked walk?

Teacher-forced on the true trace of a counting question (`a1 red 1. b3 blue -. …`): at every
attribute word the model must predict the object's attribute (perception) and at every mark the
tally or `-` (comparison). A vote cannot fix a step the model never learned, so both must be high on
the labelled levels before self-evolution can work, and early in pretraining: the gate that stops a
failing recipe (docs/experiments.md). Run via `visplay eval --probe`; test:
`pytest tests/test_eval_world.py`.
"""

from __future__ import annotations

import random

import torch

from visplay.eval.world import SCENES_PER_SEED
from visplay.roles.prompts import reasoner_messages
from visplay.worlds.questions import MARKED_FAMILIES
from visplay.worlds.scene import WorldConfig, make_scene
from visplay.worlds.questions import make_question
from visplay.worlds.trace import THINK_OPEN
from visplay.worlds.trace import target as trace_target


def _walk_spans(think: str) -> list[tuple[str, int, int]]:
    """(role, start, end) character spans in an inline-marked walk (``cell attrs… mark. …``):
    role "perception" for each attribute word, "comparison" for each mark."""
    spans, pos = [], 0
    for part in think.split(". "):
        words = part.split(" ")
        offset = pos
        for j, w in enumerate(words):
            if j > 0:
                role = "comparison" if j == len(words) - 1 else "perception"
                spans.append((role, offset, offset + len(w)))
            offset += len(w) + 1
        pos += len(part) + 2
    return spans


@torch.no_grad()
def trace_probe(model, processor, world: WorldConfig, families=MARKED_FAMILIES, split: str = "heldout",
                n: int = 200, seed: int = 0, batch_size: int = 16) -> dict:
    """Teacher-forced accuracy of the decisive tokens of the marked walk, by role and by level.

    The true trace is fed; at each attribute word (perception: did it read the object?) and each
    mark (comparison: does this object match, and what is the tally?) the model's argmax next token
    must equal the truth. A vote cannot repair a step the model never learned, so both must be high
    on the labelled levels early in pretraining (docs/experiments.md, the gate)."""
    from collections import defaultdict

    families = [f for f in families if f in MARKED_FAMILIES]
    if not families:
        raise ValueError(f"the trace probe reads marked walks: families must include one of {MARKED_FAMILIES}")
    tok = processor.tokenizer
    items = []
    for i in range(n):
        scene = make_scene(split, seed * SCENES_PER_SEED + i, world)
        q = make_question(scene, random.Random(f"trace-probe:{seed}:{i}"), families)
        if not scene.objects:
            continue
        prompt = processor.apply_chat_template(reasoner_messages(q.text), add_generation_prompt=True, tokenize=False)
        target, off = trace_target(q), len(THINK_OPEN)
        enc = tok(target, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        # the tokens that carry a word: from the space before it (byte-level BPE: "Ġred", " -.") to its end
        spans = [(role, [t for t, (x, y) in enumerate(offsets) if x < b + off and y > a + off - 1])
                 for role, a, b in _walk_spans(q.think)]  # off: where the trace starts in the target
        items.append((prompt, target, scene.render(), enc["input_ids"], spans, scene.level))
    hits: dict = defaultdict(lambda: [0, 0])
    was_training, side = model.training, tok.padding_side
    model.eval()
    tok.padding_side = "right"
    for b in range(0, len(items), batch_size):
        chunk = items[b : b + batch_size]
        enc = processor(text=[p + t for p, t, *_ in chunk], images=[im for _, _, im, *_ in chunk], padding=True,
                        return_tensors="pt")
        logits = model(**enc.to(model.device)).logits
        for row, (_, _, _, tids, spans, level) in enumerate(chunk):
            ids = enc["input_ids"][row]
            length = int(enc["attention_mask"][row].sum())
            start = length - len(tids)
            if ids[start:length].tolist() != tids:
                raise ValueError("the target does not tokenize the same inside the prompt; cannot align the probe")
            pred = logits[row, start - 1 : length - 1].argmax(-1).tolist()
            for role, ts in spans:
                ok = all(pred[t] == tids[t] for t in ts)
                for key in (role, f"{role}@{level}"):
                    hits[key][0] += ok
                    hits[key][1] += 1
    model.train(was_training)
    model.model.rope_deltas = None
    tok.padding_side = side
    return {k: {"accuracy": c / t, "n": t} for k, (c, t) in sorted(hits.items())}
