"""Sampling throughput: our batched sampler (one shared prefill, B·n rows) vs naive loops, same prompts.

Prints generated tokens/s for (a) a naive loop, one generate() call per prompt per sample,
(b) one generate(num_return_sequences=n) per prompt, (c) visplay's TransformersSampler, the
ratios, and peak RSS of the process. Target: (c) >= 5x (a) at n=10; peak RSS < 4 GB.
Run: `python benchmarks/bench_sampling.py [--model tiny] [--prompts 40] [--n 10]`.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

import torch

from visplay.config import resolve_model
from visplay.models import load_model
from visplay.roles.prompts import reasoner_messages
from visplay.sampling.base import Prompt, SamplingParams
from visplay.sampling.hf import TransformersSampler
from visplay.worlds.questions import make_question
from visplay.worlds.scene import make_scene


def n_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t)["input_ids"]) + 1 for t in texts)  # +1: the end-of-turn token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, processor = load_model(resolve_model(args.model))
    tok = processor.tokenizer
    rng = random.Random(0)
    prompts = []
    for i in range(args.prompts):
        scene = make_scene("heldout", i)
        prompts.append(Prompt(reasoner_messages(make_question(scene, rng).text), (scene.render(),)))
    sampler = TransformersSampler(model, processor)
    params = SamplingParams(n=args.n, temperature=1.0, top_k=40, max_new_tokens=args.max_new_tokens)
    gen = dict(do_sample=True, temperature=1.0, top_k=40, max_new_tokens=args.max_new_tokens,
               suppress_tokens=sampler.suppress, eos_token_id=sampler.eos_id, pad_token_id=sampler.pad_id)

    def naive_per_sample():
        out = []
        for p in prompts:
            enc = sampler.encode([p])
            for _ in range(args.n):
                seq = model.generate(**enc, **gen)
                out.append(tok.decode(seq[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return out

    def naive_per_prompt():
        out = []
        for p in prompts:
            enc = sampler.encode([p])
            seq = model.generate(**enc, num_return_sequences=args.n, **gen)
            out += tok.batch_decode(seq[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    def ours():
        return [t for row in sampler.generate(prompts, params) for t in row]

    rows = []
    with torch.no_grad():
        for name, fn in [("naive: 1 prompt x 1 sample per call", naive_per_sample),
                         ("per prompt, num_return_sequences=n", naive_per_prompt),
                         ("visplay TransformersSampler", ours)]:
            t0 = time.perf_counter()
            texts = fn()
            dt = time.perf_counter() - t0
            rows.append((name, dt, n_tokens(tok, texts) / dt))
    base = rows[0][2]
    print(f"model {args.model}, {args.prompts} prompts x n={args.n}, max {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<40} {'seconds':>8} {'tokens/s':>9} {'vs naive':>9}")
    for name, dt, tps in rows:
        print(f"{name:<40} {dt:>8.1f} {tps:>9.0f} {tps / base:>8.1f}x")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
