"""One questioner and one reasoner GRPO step on a randomly initialised model of a preset's shape.

Measures, per phase: seconds per step, tokens/s (prompt + completion tokens the policy trains on),
MFU = 6·N·tokens/s ÷ (GPUs × bf16 peak) with N the parameter count (training FLOPs only: rollout,
reference and reward-sampling forwards are extra work it does not count), and peak memory
(`torch.cuda.max_memory_allocated`, or the process's peak RSS on CPU). The model is the real
`Qwen2_5_VLForConditionalGeneration` built from the preset's ``arch`` (no weights, no hub); the
tokenizer and chat template are the embedded tiny model's (token ids fit any vocabulary), images are
random at ``--pixels``. The step is the loop's own: `visplay.evolve.grpo.build_trainer` with the preset's
phase settings (lr, KL beta, gradient checkpointing, frozen vision or not), batch sizes from the
flags; the questioner reward samples ``--reward-samples`` answers per rollout from the policy itself
(the loop uses the frozen reasoner: same cost, half the memory here). With ``--steps 2`` (default)
the first step is a warm-up and the second is reported. Under `accelerate launch` every GPU runs
one process (tokens are counted over all of them; rank 0 prints).

    python benchmarks/bench_gpu_step.py --preset qwen2_5_vl_3b                      # one GPU, real shape
    accelerate launch --config_file configs/accelerate/zero3.yaml benchmarks/bench_gpu_step.py \
        --preset qwen2_5_vl_7b                                                      # 8 GPUs
    python benchmarks/bench_gpu_step.py --preset qwen2_5_vl_3b --scale tiny --steps 1   # CPU smoke run

Test (CPU, tiny scale): `pytest tests/test_bench_gpu_step.py`. docs/scaling.md, "GPU checks".
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class StepTimer:
    """Wall time of every optimizer step (a TrainerCallback built lazily, so importing is cheap)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self
        self.times: list[float] = []
        self._t0 = 0.0

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times.append(time.perf_counter() - timer._t0)

        self.callback = _Callback()


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def random_images(n: int, pixels: int, seed: int) -> list[Image.Image]:
    side = max(28, int(round(pixels ** 0.5 / 28)) * 28)
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def run_phase(name: str, model, processor, dataset, reward, phase, out: Path, n_params: int, gpus: int,
              peak_tflops: float) -> dict:
    from visplay.evolve.grpo import build_trainer

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer()
    trainer, _ = build_trainer(model, processor, dataset, reward, phase, out / f"{name}.ckpt",
                               bf16=torch.cuda.is_available(), save_strategy="no", disable_tqdm=True)
    trainer.add_callback(timer.callback)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    tokens = [b["num_tokens"] - a["num_tokens"] for a, b in zip([{"num_tokens": 0}] + logs, logs)]
    step_s, step_tokens = timer.times[-1], tokens[-1]
    tps = step_tokens / step_s
    return {
        "phase": name, "steps": len(timer.times), "step_seconds": step_s, "tokens_per_step": step_tokens,
        "tokens_per_s": tps, "mfu": 6 * n_params * tps / (gpus * peak_tflops * 1e12),
        "completion_mean_length": logs[-1].get("completions/mean_length"), "peak_memory_gib": peak_memory_gib(),
    }


def main(argv: list[str] | None = None) -> dict:
    from visplay.answers import Grader
    from visplay.arch import downscaled, param_counts, random_model
    from visplay.config import EMBEDDED_MODELS, load_config
    from visplay.data.sources import ImageItem
    from visplay.evolve.stages import questioner_dataset
    from visplay.roles.prompts import reasoner_messages
    from visplay.sampling.hf import TransformersSampler
    from visplay.rewards.questioner import QuestionerReward
    from visplay.rewards.registry import build_rewards

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2_5_vl_3b")
    ap.add_argument("--scale", choices=("full", "tiny"), default="full", help="tiny: 2-layer model of the same structure")
    ap.add_argument("--steps", type=int, default=2, help="steps per phase; the last one is reported")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--generations", type=int, default=8, help="samples per prompt")
    ap.add_argument("--per-device-batch", type=int, default=None, help="completions per forward/backward")
    ap.add_argument("--completion", type=int, default=512, help="max completion tokens")
    ap.add_argument("--pixels", type=int, default=512 * 512, help="pixels per image (512x512 = 334 image tokens)")
    ap.add_argument("--reward-samples", type=int, default=2, help="reasoner answers per questioner rollout")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    cfg = load_config(args.preset, args.overrides)
    if cfg.arch is None:
        raise SystemExit(f"preset {args.preset} has no arch section")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(EMBEDDED_MODELS["tiny"])
    processor.image_processor.size = {"shortest_edge": args.pixels, "longest_edge": args.pixels}
    tok = processor.tokenizer
    names = {"bos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
             "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>"}
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}
    arch = downscaled(cfg.arch, vocab_size=len(tok)) if args.scale == "tiny" else cfg.arch
    n_params = param_counts(arch).total
    from visplay.dist import current

    ranks = current()  # under `accelerate launch`/torchrun: one GPU per process
    cuda = torch.cuda.is_available()
    device = f"cuda:{ranks.local_rank}" if cuda else "cpu"
    gpus = ranks.world
    t0 = time.perf_counter()
    model = random_model(arch, ids, dtype=torch.float32, device=device)  # fp32 master weights, bf16 autocast
    build_s = time.perf_counter() - t0
    results = {"preset": args.preset, "scale": args.scale, "params": n_params, "device": torch.cuda.get_device_name()
               if cuda else "cpu", "peak_tflops": cfg.hardware.peak_tflops, "build_seconds": build_s,
               "args": vars(args), "phases": []}
    with tempfile.TemporaryDirectory() as tmp, Grader(workers=0) as grader:
        out = Path(tmp)
        # TRL builds the KL reference model from the policy's path: save the random init once (bf16)
        model.to(torch.bfloat16).save_pretrained(out / "init")
        processor.save_pretrained(out / "init")
        model.to(torch.float32)
        model.config._name_or_path = str(out / "init")
        images = random_images(args.prompts * args.steps, args.pixels, seed=0)
        phases = {}
        for role in ("questioner", "reasoner"):
            phases[role] = replace(getattr(cfg.evolve, role), steps=args.steps, prompts_per_step=args.prompts,
                                   prompts_per_rollout=None, num_generations=args.generations,
                                   per_device_batch=args.per_device_batch, max_completion_length=args.completion,
                                   use_vllm=False, save_steps=10**6)
        q_items = [ImageItem(id=f"bench/{i}", image=im, origin="bench") for i, im in enumerate(images)]
        sampler = TransformersSampler(model, processor)
        q_reward = QuestionerReward(sampler, grader, m=args.reward_samples, max_new_tokens=args.completion)
        results["phases"].append(run_phase("questioner", model, processor, questioner_dataset(q_items), q_reward,
                                           phases["questioner"], out, n_params, gpus, cfg.hardware.peak_tflops))
        from datasets import Dataset

        rows = [{"prompt": reasoner_messages("How many objects are there?"), "image": im, "label": "3"} for im in images]
        results["phases"].append(run_phase("reasoner", model, processor, Dataset.from_list(rows),
                                           build_rewards(cfg.evolve.reasoner.rewards, grader=grader),
                                           phases["reasoner"], out, n_params, gpus, cfg.hardware.peak_tflops))
    if not ranks.main:
        return results
    print(f"{args.preset} ({args.scale}: {n_params / 1e6:,.1f}M params) on {results['device']} x{gpus}; "
          f"{args.prompts} prompts x {args.generations} samples, <= {args.completion} completion tokens, "
          f"{args.pixels} px images")
    print(f"{'phase':<11}{'s/step':>9}{'tokens/step':>13}{'tokens/s':>11}{'MFU':>8}{'peak GiB':>10}")
    for r in results["phases"]:
        print(f"{r['phase']:<11}{r['step_seconds']:>9.2f}{r['tokens_per_step']:>13,.0f}{r['tokens_per_s']:>11,.0f}"
              f"{r['mfu']:>8.1%}{r['peak_memory_gib']:>10.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
