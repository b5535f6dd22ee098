"""Transformers sampler: batched generation with KV cache, one prefill shared by the n samples.

Each batch of prompts is prefilled once (vision tower + prompt tokens), then its KV cache is
repeated n times into a cache allocated once, and decoding continues in one batch of B·n rows.
Special tokens other than the end of turn are suppressed, so a sampled `<|image_pad|>` can never
reach the next forward pass. A sample is the argmax of the warped logits plus Gumbel noise from the
batch's own generator (the Gumbel-max trick: the same distribution as softmax sampling), so a
batch's samples depend on its seed alone; on a CPU the batches then run on one-thread workers at
once, each with its own copy of the model (small models: ~1.3x over one two-thread process).
Benchmark: `python benchmarks/bench_sampling.py`; test: `pytest tests/test_sampling.py`.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, StaticCache, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from visplay.sampling.base import Prompt, SamplingParams
from visplay.console import bar_disable
from visplay.models import END_OF_TURN, suppressed_ids


def _chunks(seq: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    for i in range(0, len(seq), size):
        yield i, seq[i : i + size]


class _GumbelMax(LogitsProcessor):
    """Greedy decoding over logits + Gumbel noise = a sample from their softmax, drawn from ``generator``."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # U in [0, 1): the noise -log(-log U) is at most ~16.6 and never +inf, so a masked (-inf) token stays out
        u = torch.rand(scores.shape, generator=self.generator, dtype=scores.dtype, device=scores.device)
        return scores - (-u.log()).log()


def _warpers(params: SamplingParams, generator: torch.Generator) -> LogitsProcessorList:
    out = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k:
        out.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1:
        out.append(TopPLogitsWarper(params.top_p))
    return LogitsProcessorList([*out, _GumbelMax(generator)])


def _preallocated(model, prefilled, n: int, length: int):
    """The prefill's KV cache, each row repeated n times, copied into a cache allocated once for
    ``length`` tokens: a growing cache re-copies itself every decoded token (`torch.cat`), which
    took 72 % of the tiny model's sampling time (profiled: docs/experiments.md, session 10)."""
    cache = StaticCache(config=model.config, max_cache_len=length)
    for i, layer in enumerate(prefilled.layers):
        cache.layers[i].update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0))
    return cache


class TransformersSampler:
    """Sampler over an in-memory model; ``batch_rows`` bounds B·n rows decoded at once; ``threads``
    batches run at once on a CPU (default: torch's thread count; 1 on a GPU)."""

    def __init__(self, model, processor, batch_rows: int = 256, progress: bool = False, threads: int | None = None):
        self.model = model
        self.processor = processor
        self.batch_rows = batch_rows
        self.progress = progress
        if threads is None:
            threads = torch.get_num_threads() if model.device.type == "cpu" else 1
        self.threads = threads
        tok = processor.tokenizer
        self.eos_id = tok.convert_tokens_to_ids(END_OF_TURN)
        self.pad_id = tok.pad_token_id
        self.suppress = suppressed_ids(tok)
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads at once

    def encode(self, prompts: Sequence[Prompt]) -> dict:
        texts = [self.processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in prompts]
        images = [img for p in prompts for img in p.images]
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        return self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[str]]:
        per_batch = max(1, self.batch_rows // params.n)
        if self.threads > 1 and prompts:  # as many batches as a multiple of the workers, evenly filled
            count = math.ceil(math.ceil(len(prompts) / per_batch) / self.threads) * self.threads
            per_batch = max(1, math.ceil(len(prompts) / count))
        batches = list(_chunks(prompts, per_batch))
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batches), desc="sampling", unit="batch", leave=False, disable=bar_disable())
        workers = min(self.threads, len(batches))

        def run(model, start: int, batch: Sequence[Prompt]) -> list[list[str]]:
            out = self._generate_batch(model, batch, params, torch.Generator().manual_seed(params.seed + start))
            if bar is not None:
                bar.update()
            return out

        try:
            if workers <= 1:
                return [row for start, batch in batches for row in run(self.model, start, batch)]
            return self._concurrently(run, batches, workers)
        finally:
            if bar is not None:
                bar.close()

    def _concurrently(self, run, batches: list, workers: int) -> list[list[str]]:
        """The batches on ``workers`` one-thread workers, worker w on its own copy of the model
        (generation keeps per-call state on the model), rows back in prompt order."""
        models = [self.model] + [copy.deepcopy(self.model) for _ in range(workers - 1)]
        mine = [batches[w::workers] for w in range(workers)]
        threads = torch.get_num_threads()

        def work(w: int) -> list[tuple[int, list[list[str]]]]:
            torch.set_num_threads(1)
            return [(start, run(models[w], start, batch)) for start, batch in mine[w]]

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="sampling") as pool:
                done = [x for part in pool.map(work, range(workers)) for x in part]
        finally:
            torch.set_num_threads(threads)
        return [row for _, rows in sorted(done, key=lambda x: x[0]) for row in rows]

    @torch.no_grad()
    def _generate_batch(self, model, prompts: Sequence[Prompt], params: SamplingParams,
                        generator: torch.Generator) -> list[list[str]]:
        was_training = model.training
        model.eval()
        with self._tokenizer_lock:
            enc = self.encode(prompts).to(model.device)
        n = params.n
        # Prefill all but the last prompt token once; generate() processes the last one itself.
        pre = {k: v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in enc.items()}
        inner = model.model
        inner.rope_deltas = None
        prefilled = model(**pre, use_cache=True).past_key_values
        cache = _preallocated(model, prefilled, n, enc["input_ids"].shape[1] + params.max_new_tokens)
        if n > 1 and inner.rope_deltas is not None:  # None for text-only prompts: generate() sets zeros itself
            inner.rope_deltas = inner.rope_deltas.repeat_interleave(n, 0)
        ids = enc["input_ids"].repeat_interleave(n, 0)
        mask = enc["attention_mask"].repeat_interleave(n, 0)
        kw = dict(max_new_tokens=params.max_new_tokens, suppress_tokens=self.suppress, eos_token_id=self.eos_id,
                  pad_token_id=self.pad_id, do_sample=False, temperature=None, top_k=None, top_p=None)
        if not params.greedy:
            kw["logits_processor"] = _warpers(params, generator)
        seqs = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **kw)
        inner.rope_deltas = None
        model.train(was_training)
        with self._tokenizer_lock:
            texts = self.processor.tokenizer.batch_decode(seqs[:, ids.shape[1] :], skip_special_tokens=True)
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
