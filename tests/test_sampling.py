"""Transformers sampler on a micro model: batched == one-by-one, n per prompt, seeds, no special tokens."""

from __future__ import annotations

import pytest
import torch

from visplay.roles.prompts import reasoner_messages
from visplay.sampling.base import Prompt, SamplingParams
from visplay.sampling.hf import TransformersSampler
from visplay.worlds.scene import make_scene


def _prompts(n=3):
    qs = ["How many red objects are there?", "What fraction of the objects are blue?", "In which column is the red circle?"]
    return [Prompt(reasoner_messages(qs[i % 3]), (make_scene("train", i).render(),)) for i in range(n)]


def test_batched_greedy_equals_one_by_one(micro):
    model, processor = micro
    s = TransformersSampler(model, processor)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    batched = s.generate(_prompts(), params)
    single = [s.generate([p], params)[0] for p in _prompts()]
    assert batched == single
    # the shared-prefill path gives exactly what plain HF generate gives
    enc = s.encode(_prompts(1))
    ref = model.generate(**enc, max_new_tokens=8, do_sample=False, suppress_tokens=s.suppress,
                         eos_token_id=s.eos_id, pad_token_id=s.pad_id)
    assert processor.tokenizer.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True) == batched[0][0]


def test_n_samples_and_seeds(micro):
    s = TransformersSampler(*micro)
    a = s.generate(_prompts(), SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=1))
    b = s.generate(_prompts(), SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=1))
    c = s.generate(_prompts(), SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=2))
    assert [len(x) for x in a] == [4, 4, 4]
    assert a == b and a != c


def test_special_tokens_never_sampled(micro):
    model, processor = micro
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    head = model.get_output_embeddings().weight
    saved = head[pad].clone()
    with torch.no_grad():
        head[pad] = 50.0 * head.abs().max()  # the model now loves <|image_pad|>
    try:
        s = TransformersSampler(model, processor)
        out = s.generate(_prompts(2), SamplingParams(n=3, temperature=1.0, max_new_tokens=6))
        raw = model.generate(**s.encode(_prompts(1)), max_new_tokens=3, do_sample=False)
        assert pad in raw[0, -3:].tolist()  # without suppression it would be sampled
        assert pad in s.suppress
        assert all("<|" not in t for row in out for t in row)
    finally:
        with torch.no_grad():
            head[pad] = saved


def test_bad_params():
    with pytest.raises(ValueError, match="n must be"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
