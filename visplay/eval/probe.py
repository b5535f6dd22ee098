"""Perception probe: does the model read the colour of the object in a given cell?

Teacher-forced: the prompt asks for the colour of the object in cell X and the completion is forced
up to `<think>X: <size>`; the probe reads which colour word the model puts next (argmax among the
colour words). A vote cannot fix a perception error, so this must be high before headroom can
exist. Run via `visplay eval --probe`; test: `pytest tests/test_eval_world.py`.
"""

from __future__ import annotations

import random

import torch

from visplay.roles.prompts import reasoner_messages
from visplay.worlds.questions import LETTERS
from visplay.worlds.scene import COLOURS, WorldConfig, make_scene


def colour_token_ids(tokenizer) -> dict[str, int]:
    ids = {c: tokenizer(f" {c}", add_special_tokens=False)["input_ids"][0] for c in COLOURS}
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"colour words share a first token: {ids}")
    return ids


@torch.no_grad()
def colour_probe(model, processor, world: WorldConfig, split: str = "heldout", n: int = 200, seed: int = 0,
                 batch_size: int = 32) -> dict:
    """Accuracy of the teacher-forced colour read-out over ``n`` objects of held-out scenes."""
    tok = processor.tokenizer
    ids = colour_token_ids(tok)
    names = list(ids)
    rng = random.Random(f"probe:{seed}")
    items = []
    i = 0
    while len(items) < n:
        scene = make_scene(split, seed * 10**6 + i, world)
        i += 1
        if not scene.objects:
            continue
        o = rng.choice(scene.objects)
        opts = rng.sample([c for c in names if c != o.colour], 3) + [o.colour]
        rng.shuffle(opts)
        q = f"What colour is the object in {o.cell}? " + " ".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(opts))
        text = processor.apply_chat_template(reasoner_messages(q), add_generation_prompt=True, tokenize=False)
        items.append((text + f"<think>{o.cell}: {o.size}", scene.render(), o.colour))
    was_training = model.training
    model.eval()
    tok.padding_side = "left"
    correct = 0
    cand = torch.tensor([ids[c] for c in names])
    for b in range(0, n, batch_size):
        chunk = items[b : b + batch_size]
        enc = processor(text=[t for t, _, _ in chunk], images=[im for _, im, _ in chunk], padding=True, return_tensors="pt")
        logits = model(**enc.to(model.device)).logits[:, -1, :]
        pred = logits[:, cand.to(logits.device)].argmax(-1).tolist()
        correct += sum(names[p] == truth for p, (_, _, truth) in zip(pred, chunk))
    model.train(was_training)
    model.model.rope_deltas = None
    return {"n": n, "accuracy": correct / n, "chance": 1 / len(names)}
