"""Transformers sampler: batched generation with KV cache, one prefill shared by the n samples.

Each batch of prompts is prefilled once (vision tower + prompt tokens), then its KV cache is
repeated n times and decoding continues in one batch of B·n rows. Special tokens other than the
end of turn are suppressed, so a sampled `<|image_pad|>` can never reach the next forward pass.
Benchmark: `python benchmarks/bench_sampling.py`; test: `pytest tests/test_sampling.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from visplay.sampling.base import Prompt, SamplingParams
from visplay.console import bar_disable


def _chunks(seq: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    for i in range(0, len(seq), size):
        yield i, seq[i : i + size]


class TransformersSampler:
    """Sampler over an in-memory model; ``batch_rows`` bounds B·n rows decoded at once."""

    def __init__(self, model, processor, batch_rows: int = 256, progress: bool = False):
        self.model = model
        self.processor = processor
        self.batch_rows = batch_rows
        self.progress = progress
        tok = processor.tokenizer
        self.eos_id = tok.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tok.pad_token_id
        self.suppress = sorted({i for i in tok.all_special_ids if i != self.eos_id} | set(self._added_special(tok)))

    @staticmethod
    def _added_special(tok) -> list[int]:
        return [i for i, t in tok.added_tokens_decoder.items() if t.special and t.content != "<|im_end|>"]

    def encode(self, prompts: Sequence[Prompt]) -> dict:
        texts = [self.processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in prompts]
        images = [img for p in prompts for img in p.images]
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        return self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[str]]:
        out: list[list[str]] = []
        per_batch = max(1, self.batch_rows // params.n)
        batches = list(_chunks(prompts, per_batch))
        it = batches
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="sampling", unit="batch", leave=False, disable=bar_disable())
        for start, batch in it:
            torch.manual_seed(params.seed + start)
            out += self._generate_batch(batch, params)
        return out

    def _generate_batch(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[str]]:
        model = self.model
        was_training = model.training
        model.eval()
        enc = self.encode(prompts).to(model.device)
        n = params.n
        # Prefill all but the last prompt token once; generate() processes the last one itself.
        pre = {k: v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in enc.items()}
        inner = model.model
        inner.rope_deltas = None
        cache = model(**pre, use_cache=True).past_key_values
        if n > 1:
            cache.batch_repeat_interleave(n)
            if inner.rope_deltas is not None:  # None for text-only prompts: generate() sets zeros itself
                inner.rope_deltas = inner.rope_deltas.repeat_interleave(n, 0)
        ids = enc["input_ids"].repeat_interleave(n, 0)
        mask = enc["attention_mask"].repeat_interleave(n, 0)
        kw = dict(max_new_tokens=params.max_new_tokens, suppress_tokens=self.suppress, eos_token_id=self.eos_id,
                  pad_token_id=self.pad_id)
        if params.greedy:
            kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            kw.update(do_sample=True, temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
        seqs = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **kw)
        inner.rope_deltas = None
        model.train(was_training)
        texts = self.processor.tokenizer.batch_decode(seqs[:, ids.shape[1] :], skip_special_tokens=True)
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
