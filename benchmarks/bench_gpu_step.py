"""One questioner and one reasoner GRPO step, and one SFT step full and with LoRA, on a randomly
initialised model of a preset's shape.

The GPU check of docs/scaling.md section 12 (`make bench-gpu`: installs `.[vllm]` into its own venv,
then runs this at Qwen2.5-VL-3B on one GPU; no GPU is one clear line, before anything is installed).
Rollouts go through TRL's vLLM colocate when vllm is importable (``--rollouts auto``), else
transformers generate. Printed per phase, and as JSON (``--out`` writes the same object):

* rollout tokens/s: completion tokens generated on this GPU / seconds in generation (per GPU);
* update MFU: 6·N·(prompt + completion tokens trained on) / (seconds of the update, i.e. the step
  less generation, rewards and reference log-probs) ÷ (GPUs × bf16 peak), N the parameter count;
  step MFU is the same over the whole step;
* peak memory (`torch.cuda.max_memory_allocated`, or the process's peak RSS on CPU);
* the anchors to compare with (EasyR1, Qwen2.5-VL-3B on 8xH100: 1,200 rollout tokens/s per GPU,
  actor MFU 6.3 %, 180 s per step).

The model is the real `Qwen2_5_VLForConditionalGeneration` built from the preset's ``arch`` (no
weights, no hub); the tokenizer and chat template are the embedded tiny model's (vLLM is held to its
ids with ``allowed_token_ids``), images are random at ``--pixels``. The step is the loop's own:
`visplay.evolve.grpo.build_trainer` with the preset's phase settings (lr, KL beta, gradient checkpointing,
frozen vision or not, LoRA), batch sizes from the flags; the questioner reward samples
``--reward-samples`` answers per rollout from the policy itself (the loop uses the frozen reasoner:
same cost). The SFT steps (``sft``: every parameter but the vision tower; ``sft_lora``: LoRA of rank
``--sft-lora-rank``) are the committee recipe's member SFT: `visplay.evolve.sft.sft_trainer` on chain rows of
``--prompts`` rows per GPU (an image and a ``--completion``-token chain each), tokens/s and MFU over the
whole step (an SFT step is all update), gradient checkpointing as the preset's GRPO phases have it.
With ``--steps 2`` (default) the first step is a warm-up and the second is reported.
With vLLM each phase runs in a fresh process, so one phase's vLLM engine never holds the next one's
memory. Under `accelerate launch` every GPU runs one process (rank 0 prints).

    make bench-gpu                                                                  # the GPU check
    python benchmarks/bench_gpu_step.py --preset qwen2_5_vl_3b                      # one GPU, real shape
    python benchmarks/bench_gpu_step.py --preset qwen2_5_vl_3b --phases sft,sft_lora   # the member SFT only
    accelerate launch --config_file configs/accelerate/zero3.yaml benchmarks/bench_gpu_step.py \
        --preset qwen2_5_vl_7b --rollouts generate                                  # 8 GPUs
    python benchmarks/bench_gpu_step.py --preset qwen2_5_vl_3b --scale tiny --steps 1   # CPU smoke run

Test (CPU, tiny scale, and the no-GPU error): `pytest tests/test_bench_gpu_step.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visplay.run.rundir import library_versions


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


#: What the numbers are compared with: EasyR1 on Qwen2.5-VL-3B, 8xH100 (docs/scaling.md section 12).
ANCHORS = {"source": "EasyR1, Qwen2.5-VL-3B on 8xH100", "rollout_tokens_per_s_per_gpu": 1200, "actor_mfu": 0.063,
           "seconds_per_step": 180}
NO_GPU = ("bench_gpu_step: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a GPU machine "
          "(docs/scaling.md section 12), or pass --scale tiny for the CPU smoke run")


class Stopwatch:
    """Seconds spent in one method of an object (and what it returned), per call: wraps it in place."""

    def __init__(self, obj, name: str):
        self.calls: list[tuple[float, object]] = []
        original = getattr(obj, name, None)
        if original is None:  # another TRL: the step is still timed, this part is reported as null
            return

        def timed(*a, **kw):
            sync()
            t0 = time.perf_counter()
            out = original(*a, **kw)
            sync()
            self.calls.append((time.perf_counter() - t0, out))
            return out

        setattr(obj, name, timed)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mfu(n_params: int, tokens: float, seconds: float, gpus: int, peak_tflops: float) -> float:
    """Training FLOPs (6 per parameter per token: forward 2, backward 4) per second over the peak.

    >>> round(mfu(3_000_000_000, 10_000, 1.0, 1, 989.0), 4)  # 1.8e14 FLOP/s of 9.89e14
    0.182
    """
    return 6 * n_params * tokens / (seconds * gpus * peak_tflops * 1e12)


def use_vllm(choice: str) -> bool:
    """``--rollouts``: auto = vLLM colocate when vllm is importable and a GPU is visible."""
    if choice == "generate":
        return False
    found = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if choice == "vllm" and not found:
        raise SystemExit("bench_gpu_step: --rollouts vllm needs vllm and a GPU: pip install -e '.[vllm]' on a GPU "
                         "machine, or --rollouts generate")
    return found


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def random_images(n: int, pixels: int, seed: int) -> list[Image.Image]:
    side = max(28, int(round(pixels ** 0.5 / 28)) * 28)
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def run_phase(name: str, model, processor, dataset, reward, phase, out: Path, n_params: int, gpus: int,
              peak_tflops: float, **overrides) -> dict:
    from visplay.evolve.grpo import build_trainer

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer()
    trainer, _ = build_trainer(model, processor, dataset, reward, phase, out / f"{name}.ckpt",
                               bf16=torch.cuda.is_available(), save_strategy="no", disable_tqdm=True, **overrides)
    trainer.add_callback(timer.callback)
    rollout = Stopwatch(trainer, "_generate_single_turn")  # returns (completion ids, logprobs)
    scoring = Stopwatch(trainer, "_generate_and_score_completions")  # rollout + rewards + reference log-probs
    trainer.train()
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    tokens = [b["num_tokens"] - a["num_tokens"] for a, b in zip([{"num_tokens": 0}] + logs, logs)]
    step_s, step_tokens = timer.times[-1], tokens[-1]
    result = {
        "phase": name, "rollouts": "vllm colocate" if phase.use_vllm else "transformers generate",
        "lora_rank": phase.lora_rank, "steps": len(timer.times), "step_seconds": step_s,
        "tokens_per_step": step_tokens, "tokens_per_s": step_tokens / step_s,
        "mfu": mfu(n_params, step_tokens, step_s, gpus, peak_tflops),
        "completion_mean_length": logs[-1].get("completions/mean_length"),
        "rollout_seconds": None, "rollout_tokens": None, "rollout_tokens_per_s": None, "update_seconds": None,
        "update_mfu": None, "peak_memory_gib": peak_memory_gib(),
    }
    if rollout.calls:  # the last step's generation(s), on this GPU
        last = rollout.calls[-max(1, len(rollout.calls) // len(timer.times)):]
        seconds = sum(t for t, _ in last)
        generated = sum(len(ids) for _, (completions, _) in last for ids in completions)
        result.update(rollout_seconds=seconds, rollout_tokens=generated, rollout_tokens_per_s=generated / seconds)
    if scoring.calls:
        update_s = step_s - scoring.calls[-1][0]
        if update_s > 0:
            result.update(update_seconds=update_s, update_mfu=mfu(n_params, step_tokens, update_s, gpus, peak_tflops))
    del trainer
    return result


def run_sft(name: str, model, processor, rows: list[dict], lora_rank: int, checkpointing: bool, out: Path,
            n_params: int, gpus: int, peak_tflops: float, steps: int, per_device: int | None) -> dict:
    """One member-SFT phase of ``steps`` steps of ``len(rows) / steps`` rows per GPU; the last step reported."""
    from visplay.config import SFTPhase
    from visplay.evolve.sft import sft_trainer
    from visplay.tiny.pretrain import Collator

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    per_gpu = len(rows) // steps
    phase = SFTPhase(batch_size=per_gpu * gpus, lr=1e-5, lora_rank=lora_rank, per_device_batch=per_device)
    timer = StepTimer()
    trainer = sft_trainer(model, processor, rows, out / f"{name}.ckpt", steps=steps, batch_size=phase.batch_size,
                          lr=phase.lr, seed=0, per_device_batch=per_device, gradient_checkpointing=checkpointing,
                          lora=phase, bf16=torch.cuda.is_available(), world=gpus, save_strategy="no")
    trainer.add_callback(timer.callback)
    trainer.train()
    per_row = int(Collator(processor)(rows[:1])["attention_mask"].sum())  # rows alike: image + chain
    step_tokens, step_s = per_row * phase.batch_size, timer.times[-1]
    if lora_rank:
        trainer.model.unload()  # the adapters out again: the model is the same for whatever runs next
    result = {"phase": name, "rollouts": None, "lora_rank": lora_rank, "steps": len(timer.times),
              "step_seconds": step_s, "tokens_per_step": step_tokens, "tokens_per_s": step_tokens / step_s,
              "mfu": mfu(n_params, step_tokens, step_s, gpus, peak_tflops), "completion_mean_length": None,
              "rollout_seconds": None, "rollout_tokens": None, "rollout_tokens_per_s": None, "update_seconds": step_s,
              "peak_memory_gib": peak_memory_gib()}
    result["update_mfu"] = result["mfu"]
    del trainer
    return result


def chain_rows(images: list, completion: int) -> list[dict]:
    """SFT rows like `visplay.evolve.sft.chain_rows`' (a question, its image, an agreeing chain), the chain
    about ``completion`` tokens long."""
    from visplay.roles.prompts import reasoner_messages

    walk = " ".join(f"a{i % 5 + 1} red {i % 9}." for i in range(max(1, completion // 6)))
    return [{"messages": reasoner_messages("How many objects are there?"), "target": f"<think>{walk}</think>\\boxed{{3}}",
             "image": im} for im in images]


GRPO_PHASES, SFT_PHASES = ("questioner", "reasoner"), ("sft", "sft_lora")


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    ap.add_argument("--rollouts", choices=("auto", "vllm", "generate"), default="auto",
                    help="auto: TRL's vLLM colocate when vllm is installed (and a GPU is there), else transformers")
    ap.add_argument("--vllm-share", type=float, default=0.2,
                    help="vllm_gpu_memory_utilization: share of the GPU for vLLM (the 3B training state takes ~63 GiB)")
    ap.add_argument("--phases", default="questioner,reasoner,sft,sft_lora",
                    help="comma-separated, in this order: questioner, reasoner (GRPO), sft, sft_lora (member SFT)")
    ap.add_argument("--sft-lora-rank", type=int, default=64, help="the sft_lora phase's LoRA rank")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.scale == "full" and not torch.cuda.is_available():
        raise SystemExit(NO_GPU)
    phases = [p for p in args.phases.split(",") if p]
    if not phases or set(phases) - set(GRPO_PHASES + SFT_PHASES):
        raise SystemExit(f"bench_gpu_step: --phases takes some of {', '.join(GRPO_PHASES + SFT_PHASES)}, "
                         f"got {args.phases!r}")
    vllm = use_vllm(args.rollouts)
    if vllm and len(phases) > 1:  # a fresh process per phase: one vLLM engine per process, freed with it
        results: dict | None = None
        with tempfile.TemporaryDirectory() as tmp:
            for phase in phases:
                part = Path(tmp) / f"{phase}.json"
                subprocess.run([sys.executable, __file__, *argv, "--phases", phase, "--out", str(part)], check=True)
                got = json.loads(part.read_text())
                results = got if results is None else {**results, "phases": results["phases"] + got["phases"]}
    else:
        results = measure(args, phases, vllm)
    if results.get("main", True):
        report(results, args)
    return results


def measure(args, phases: list[str], vllm: bool) -> dict:
    """Build the model, run the phases in this process; the results as a JSON-able dict."""
    from datasets import Dataset
    from transformers import AutoProcessor

    from visplay.answers import Grader
    from visplay.arch import downscaled, param_counts, random_model
    from visplay.config import EMBEDDED_MODELS, load_config
    from visplay.data.sources import ImageItem
    from visplay.dist import current
    from visplay.evolve.rows import questioner_dataset
    from visplay.rewards.questioner import QuestionerReward
    from visplay.rewards.registry import build_rewards
    from visplay.roles.prompts import reasoner_messages
    from visplay.sampling.hf import TransformersSampler

    cfg = load_config(args.preset, args.overrides)
    if cfg.arch is None:
        raise SystemExit(f"preset {args.preset} has no arch section")
    processor = AutoProcessor.from_pretrained(EMBEDDED_MODELS["tiny"])
    processor.image_processor.size = {"shortest_edge": args.pixels, "longest_edge": args.pixels}
    tok = processor.tokenizer
    names = {"bos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
             "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>"}
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}
    arch = downscaled(cfg.arch, vocab_size=len(tok)) if args.scale == "tiny" else cfg.arch
    n_params = param_counts(arch).total
    ranks = current()  # under `accelerate launch`/torchrun: one GPU per process
    cuda = torch.cuda.is_available()
    device = f"cuda:{ranks.local_rank}" if cuda else "cpu"
    gpus = ranks.world
    t0 = time.perf_counter()
    model = random_model(arch, ids, dtype=torch.float32, device=device)  # fp32 master weights, bf16 autocast
    build_s = time.perf_counter() - t0
    results = {"preset": args.preset, "scale": args.scale, "params": n_params, "device": torch.cuda.get_device_name()
               if cuda else "cpu", "gpus": gpus, "peak_tflops": cfg.hardware.peak_tflops, "build_seconds": build_s,
               "rollouts": "vllm colocate" if vllm else "transformers generate", "anchors": ANCHORS,
               "versions": library_versions(), "args": vars(args), "main": ranks.main, "phases": []}
    # vLLM samples from the full (random) vocabulary otherwise; transformers gets suppress_tokens from build_trainer
    extra = {"generation_kwargs": {"allowed_token_ids": list(range(len(tok)))}} if vllm else {}
    with tempfile.TemporaryDirectory() as tmp, Grader(workers=0) as grader:
        out = Path(tmp)
        # TRL builds the KL reference model (and vLLM its engine) from the policy's path: save the init once (bf16)
        model.to(torch.bfloat16).save_pretrained(out / "init")
        processor.save_pretrained(out / "init")
        model.to(torch.float32)
        model.config._name_or_path = str(out / "init")
        images = random_images(args.prompts * args.steps, args.pixels, seed=0)
        settings = {}
        for role in ("questioner", "reasoner"):
            settings[role] = replace(getattr(cfg.evolve, role), steps=args.steps, prompts_per_step=args.prompts,
                                     prompts_per_rollout=None, num_generations=args.generations,
                                     per_device_batch=args.per_device_batch, max_completion_length=args.completion,
                                     use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=args.vllm_share,
                                     save_steps=10**6)
        if "questioner" in phases:
            q_items = [ImageItem(id=f"bench/{i}", image=im, origin="bench") for i, im in enumerate(images)]
            sampler = TransformersSampler(model, processor)
            q_reward = QuestionerReward(sampler, grader, m=args.reward_samples, max_new_tokens=args.completion)
            results["phases"].append(run_phase("questioner", model, processor, questioner_dataset(q_items), q_reward,
                                               settings["questioner"], out, n_params, gpus, cfg.hardware.peak_tflops,
                                               **extra))
        if "reasoner" in phases:
            rows = [{"prompt": reasoner_messages("How many objects are there?"), "image": im, "label": "3"}
                    for im in images]
            results["phases"].append(run_phase("reasoner", model, processor, Dataset.from_list(rows),
                                               build_rewards(cfg.evolve.reasoner.rewards, grader=grader),
                                               settings["reasoner"], out, n_params, gpus, cfg.hardware.peak_tflops,
                                               **extra))
        for name in (p for p in SFT_PHASES if p in phases):  # sft_lora last: its adapters come out again anyway
            rank = args.sft_lora_rank if name == "sft_lora" else 0
            results["phases"].append(run_sft(name, model, processor, chain_rows(images, args.completion), rank,
                                             cfg.evolve.reasoner.gradient_checkpointing, out, n_params, gpus,
                                             cfg.hardware.peak_tflops, args.steps, args.per_device_batch))
    if args.out and ranks.main:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def report(results: dict, args) -> None:
    """The table, then the JSON (the last line of stdout), and ``--out``."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    print(f"{results['preset']} ({results['scale']}: {results['params'] / 1e6:,.1f}M params) on {results['device']} "
          f"x{results['gpus']}; {args.prompts} prompts x {args.generations} samples, <= {args.completion} completion "
          f"tokens, {args.pixels} px images; rollouts: {results['rollouts']}")
    print(f"{'phase':<11}{'s/step':>9}{'rollout tok/s':>15}{'update MFU':>12}{'step MFU':>10}{'peak GiB':>10}")
    for r in results["phases"]:
        print(f"{r['phase']:<11}{r['step_seconds']:>9.2f}{num(r['rollout_tokens_per_s'], ',.0f'):>15}"
              f"{num(r['update_mfu'], '.1%'):>12}{r['mfu']:>10.1%}{r['peak_memory_gib']:>10.1f}")
    a = results["anchors"]
    print(f"anchor ({a['source']}): {a['rollout_tokens_per_s_per_gpu']:,} rollout tokens/s per GPU, actor MFU "
          f"{a['actor_mfu']:.1%}, {a['seconds_per_step']} s/step")
    print(json.dumps(results, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
