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


def test_concurrent_batches_give_what_one_thread_gives(micro):
    """On a CPU the batches run on one-thread workers, each on a copy of the model: each batch's
    samples depend on its seed alone, so the rows (in prompt order) match one worker's, and torch's
    thread count is restored."""
    model, processor = micro
    threads = torch.get_num_threads()
    prompts = _prompts(5)  # batch_rows 4, n 2: three batches of up to 2 prompts
    params = SamplingParams(n=2, temperature=1.0, top_k=5, max_new_tokens=8, seed=3)
    torch.set_num_threads(1)  # the same one-thread kernels both ways, so the floats agree bit for bit
    try:
        one = TransformersSampler(model, processor, batch_rows=4, threads=1).generate(prompts, params)
    finally:
        torch.set_num_threads(threads)
    two = TransformersSampler(model, processor, batch_rows=4, threads=2)
    assert two.generate(prompts, params) == one and [len(r) for r in one] == [2] * 5
    assert torch.get_num_threads() == threads
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=8)
    assert two.generate(prompts, greedy) == TransformersSampler(model, processor, threads=1).generate(prompts, greedy)


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


def test_grpo_rollouts_suppress_what_the_samplers_and_the_saved_model_suppress(micro_model_dir, tmp_path):
    """One definition of the suppressed special tokens (`visplay.models.suppressed_ids`): a special
    token added to the tokenizer (``special=True``, but not among its named special tokens, as
    checkpoints that extend a vocabulary have) is kept out of GRPO's rollouts as it is kept out of
    the samplers' and the saved generation defaults -- so a phase never trains on a token its eval
    can never produce. (GRPO used ``all_special_ids`` alone before, which leaves such a token out.)"""
    from tokenizers import AddedToken

    from visplay.model_files import write_generation_defaults
    from visplay.evolve.sections import GRPOPhase
    from visplay.evolve.grpo import build_trainer
    from visplay.evolve.rows import questioner_dataset
    from visplay.data.sources import WorldSource
    from visplay.models import load_model

    model, processor = load_model(micro_model_dir)
    tok = processor.tokenizer
    tok.add_tokens([AddedToken("<|box_start|>", special=True)])
    added = tok.convert_tokens_to_ids("<|box_start|>")
    assert added not in tok.all_special_ids  # the case: special, yet not a named special token
    items = [it for it, _ in zip(WorldSource(), range(2))]
    def reward(completions, **kw):
        return [0.0] * len(completions)

    trainer, _ = build_trainer(model, processor, questioner_dataset(items), reward,
                               GRPOPhase(steps=1, prompts_per_step=2, num_generations=2), tmp_path / "x.ckpt")
    rollouts = trainer.args.generation_kwargs["suppress_tokens"]
    assert added in rollouts
    assert sorted(rollouts) == TransformersSampler(model, processor).suppress
    model.save_pretrained(tmp_path / "saved")
    write_generation_defaults(tmp_path / "saved", tok, max_new_tokens=8)
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(tmp_path / "saved").suppress_tokens == sorted(rollouts)


def test_bad_params():
    with pytest.raises(ValueError, match="n must be"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
