"""`visplay evolve --dry-run`: the resolved plan of a run, computed from the config alone.

Nothing is loaded, downloaded or written: the model's shape comes from the preset's ``arch``
section (or the model's config.json when it is on disk, e.g. the embedded tiny model), the
parameter count from building the real HF class on the meta device (`visplay.arch`).

The plan first says what the run does, in words from the resolved config (`visplay.modes.describe`:
the reasoner's objective, who labels and by which rule, the curriculum, replay, when it stops, the
settings it will not read, and the devices here: CPU when there is no GPU). Then it lists the
stages of each iteration with their sizes (images, rollouts, samples,
optimizer updates, per-GPU micro-batches), the token volume of each phase (an upper bound:
prompts are sized at ``max_pixels``, completions at their maximum length) and the memory each
GPU needs under DDP, ZeRO-2, ZeRO-3 and FSDP for bf16 mixed-precision AdamW with fp32 master
weights (16 bytes per trainable parameter in every layout; lr 1e-6 updates vanish in bf16 weights):

    ddp    fp32 weights 4 B/param, fp32 grads 4 B, Adam m+v 8 B, all replicated
    zero2  DeepSpeed bf16: bf16 weights 2 B replicated; bf16 grads 2 B and fp32 master+m+v 12 B sharded /N
    zero2_offload  as zero2 with the fp32 master weights and Adam state in CPU memory (12 B/param of RAM)
    zero3  as zero2 with the weights sharded too
    fsdp   full shard of fp32 weights, grads and Adam state (4 + 4 + 8 B) /N
    plus the KL reference model in bf16 (2 B/param), sharded under zero3/fsdp (TRL prepares it so).

Activations are a rough estimate (hidden states kept by gradient checkpointing + the fp32
log-softmax of the completion logits) and vLLM's colocated share is ``vllm_gpu_memory_utilization``
of the card.

With a committee (`evolve.committee`) the plan sizes every member (`member_plans`): its shape (the
preset's ``committee_arch`` entry, else its config.json on disk, else -- said so -- the base model's),
its weights and one batch's KV cache in the labels stage, where the in-process sampler holds every
local member at once on each generation GPU (a ``url=`` member is served elsewhere, on its own GPUs),
and with the SFT objective its SFT memory per GPU, full and with LoRA, in each layout: the members
train one after another on all N GPUs, so one member's SFT has the GPUs to itself.
Test: `pytest tests/test_scale.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from visplay.arch import ParamCounts, arch_from_hf, image_tokens, param_counts
from visplay import modes
from visplay.config import REPO_ROOT, ArchConfig, Config, ConfigError, GRPOPhase, resolve_model
from visplay.evolve.lora import SHARDED_WEIGHTS, lora_params
from visplay.run.stages import BASELINE, STAGES, stage_name

GIB = 1024 ** 3
#: Prompt text around the image (instruction, chat template, question), tokens; generous.
PROMPT_TEXT_TOKENS = 128
#: LoRA rank the plan sizes the "with LoRA" rows at when a phase trains every parameter.
PLAN_LORA_RANK = 8
#: Model FLOPs utilisation assumed for the wall-clock guess (labelled as an assumption in the output).
ASSUMED_MFU = 0.3


#: Bytes per weight of each `Config.dtype` (the sampler's copies of the members).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class PhasePlan:
    name: str
    steps: int
    rollouts: int  # completions sampled in the phase
    updates: int  # optimizer updates
    micro_batch: int  # completions per forward/backward per GPU
    accumulation: int  # micro-batches per update per GPU
    prompt_tokens: int  # per prompt, upper bound
    completion_tokens: int  # per completion, upper bound
    reward_samples: int  # frozen-reasoner answers per rollout (questioner only)

    @property
    def train_tokens(self) -> int:
        return self.rollouts * (self.prompt_tokens + self.completion_tokens)


def arch_of(cfg: Config) -> tuple[ArchConfig | None, str]:
    """The model's shape and where it came from: the config's ``arch``, else the model's config.json."""
    if cfg.arch is not None:
        return cfg.arch, "preset arch"
    path = resolve_model(cfg.model) / "config.json"
    if path.is_file():
        return arch_from_hf(json.loads(path.read_text())), str(path)
    return None, "unknown (no arch in the config and no config.json on disk)"


def member_shape(cfg: Config, i: int) -> tuple[ArchConfig | None, str]:
    """Committee member ``i``'s shape (0: the reasoner, `arch_of`) and where it came from: the preset's
    ``committee_arch[i - 1]``, else the member's config.json on disk, else the base model's shape (assumed,
    and the plan says so); a ``url=`` member without a ``committee_arch`` entry has no known shape."""
    if i == 0:
        return arch_of(cfg)
    entry = cfg.evolve.committee[i - 1]
    given = cfg.committee_arch[i - 1] if i - 1 < len(cfg.committee_arch) else None
    if given is not None:
        return given, f"preset committee_arch[{i - 1}]"
    if entry.startswith("url="):
        return None, "served: unknown (no committee_arch entry)"
    path = resolve_model(entry) / "config.json"
    if path.is_file():
        return arch_from_hf(json.loads(path.read_text())), str(path)
    base, _ = arch_of(cfg)
    return base, "assumed the base model's (no committee_arch entry, no config.json here)"


def member_plans(cfg: Config, prompt: int) -> list[dict]:
    """Every labeller's sizes (the reasoner first): parameters, its weights and one sampler batch's KV
    cache in the labels stage (every local member loaded at once), and -- when it trains (the SFT
    objective: the reasoner, and with co-evolution every local member) -- its SFT memory per GPU in each
    layout, full and with LoRA (rank ``evolve.sft_lora_rank``, else `PLAN_LORA_RANK`)."""
    ev, hw, n = cfg.evolve, cfg.hardware, cfg.hardware.world_size
    sft = ev.sft
    micro = sft.per_device_batch or max(1, sft.batch_size // n)
    sft_phase = PhasePlan(name="sft", steps=sft.epochs, rollouts=0, updates=0, micro_batch=micro, accumulation=1,
                          prompt_tokens=prompt, completion_tokens=ev.max_new_tokens, reward_samples=0)
    out = []
    for i in range(1 + len(ev.committee)):
        name = cfg.model if i == 0 else ev.committee[i - 1]
        served = name.startswith("url=")
        arch, source = member_shape(cfg, i)
        counts = param_counts(arch) if arch is not None else None
        trains = ev.reasoner_objective == "sft" and (i == 0 or (ev.coevolve and not served))
        m = {"member": i, "name": name, "served": served, "arch_source": source, "params": counts, "trains": trains,
             "weights": 0.0, "kv_cache": 0.0, "sft": {}, "sft_lora": {}, "sft_activations": 0.0}
        if counts is not None and not served and cfg.sampler.in_process:
            m["weights"] = DTYPE_BYTES[cfg.dtype] * counts.total
            m["kv_cache"] = cfg.sampler.batch_rows * (prompt + ev.max_new_tokens) * kv_bytes_per_token(arch)
        if counts is not None and trains:
            rank = sft.lora_rank or PLAN_LORA_RANK
            m["sft"] = {s: memory_per_gpu(counts, counts.trainable(True), n, s, False) for s in STRATEGIES}
            m["sft_lora"] = {s: memory_per_gpu(counts, lora_params(arch, sft, rank), n, s, False)
                             for s in STRATEGIES if s not in SHARDED_WEIGHTS}
            m["sft_lora_params"], m["sft_lora_rank"] = lora_params(arch, sft, rank), rank
            m["sft_activations"] = activations(cfg, arch, sft_phase, sft.gradient_checkpointing)
        out.append(m)
    return out


def phase_plan(name: str, phase: GRPOPhase, world_size: int, prompt_tokens: int, reward_samples: int = 0) -> PhasePlan:
    per_rank = phase.prompts_per_step * phase.num_generations // world_size
    micro = phase.per_device_batch or per_rank
    return PhasePlan(
        name=name, steps=phase.steps, rollouts=phase.steps * phase.rollout_prompts * phase.num_generations,
        updates=phase.steps * phase.updates_per_step, micro_batch=micro, accumulation=max(1, per_rank // micro),
        prompt_tokens=min(prompt_tokens, phase.max_prompt_length), completion_tokens=phase.max_completion_length,
        reward_samples=reward_samples,
    )


#: bytes per (trainable) parameter: weights, gradients, optimizer state; and which of them are sharded over N.
LAYOUTS = {
    "ddp": ((4, 4, 8), (False, False, False)),
    "zero2": ((2, 2, 12), (False, True, True)),
    "zero2_offload": ((2, 2, 0), (False, True, True)),
    "zero3": ((2, 2, 12), (True, True, True)),
    "fsdp": ((4, 4, 8), (True, True, True)),
}
STRATEGIES = tuple(LAYOUTS)


def launcher_strategy(launcher: str | None) -> str:
    """The memory layout GRPO runs with, read from the accelerate config ``hardware.launcher`` names
    (``--config_file``: DeepSpeed's ``zero_stage`` and optimizer offload, also as a launcher flag;
    FSDP; else plain data parallel). In process, or a launcher without a config file: ddp.

    >>> launcher_strategy("accelerate launch --config_file {repo}/configs/accelerate/zero2.yaml --offload_optimizer_device cpu")
    'zero2_offload'
    """
    found = re.search(r"--config_file[= ]+(\S+)", launcher or "")
    if not found:
        return "ddp"
    path = Path(found.group(1).strip("'\"").replace("{repo}", str(REPO_ROOT)))
    try:
        acc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"hardware.launcher: cannot read its --config_file {path}: {e}") from None
    kind = str(acc.get("distributed_type", "")).upper()
    if kind == "FSDP":
        return "fsdp"
    if kind != "DEEPSPEED":
        return "ddp"
    ds = acc.get("deepspeed_config") or {}
    flag = re.search(r"--offload_optimizer_device[= ]+(\w+)", launcher)
    offload = (flag.group(1) if flag else str(ds.get("offload_optimizer_device", "none"))).lower() != "none"
    stage = int(ds.get("zero_stage", 0))
    return "zero3" if stage == 3 else "zero2_offload" if stage == 2 and offload else "zero2" if stage == 2 else "ddp"


def memory_per_gpu(counts: ParamCounts, trainable: int, n: int, strategy: str, kl: bool,
                   reward_model: bool = False) -> dict[str, float]:
    """Bytes per GPU for weights, gradients, optimizer state, the KL reference model and (questioner
    phase, in-process sampling) the frozen reasoner the reward samples from, bf16 on every GPU."""
    (w, g, o), (sw, sg, so) = LAYOUTS[strategy]
    out = {
        "weights": w * counts.total / (n if sw else 1),
        "gradients": g * trainable / (n if sg else 1),
        "optimizer": o * trainable / (n if so else 1),
        "reference": (2 * counts.total / (n if sw else 1)) if kl else 0.0,
        "reward": 2 * counts.total if reward_model else 0.0,
    }
    out["total"] = sum(out.values())
    return out


def kv_bytes_per_token(arch: ArchConfig) -> int:
    """vLLM's KV cache per token in bf16: keys and values of every layer's KV heads."""
    t = arch.text
    return 2 * t.num_hidden_layers * t.num_key_value_heads * (t.hidden_size // t.num_attention_heads) * 2


def vllm_share(counts: ParamCounts, arch: ArchConfig, phase: GRPOPhase, gpu_gib: float) -> dict | None:
    """What TRL's colocated vLLM takes on each GPU (``vllm_gpu_memory_utilization`` of the card) and
    what is left of it for the KV cache after its bf16 copy of the weights (split over tensor
    parallelism), in tokens and in full-length sequences; None without colocated vLLM."""
    if not (phase.use_vllm and phase.vllm_mode == "colocate"):
        return None
    share = phase.vllm_gpu_memory_utilization * gpu_gib * GIB
    weights = 2 * counts.total / phase.vllm_tensor_parallel_size
    per_token = kv_bytes_per_token(arch) / phase.vllm_tensor_parallel_size
    tokens = max(0, int((share - weights) // per_token))
    return {"bytes": share, "weights": weights, "kv_cache": share - weights, "kv_tokens": tokens,
            "sequences": tokens // (phase.max_prompt_length + phase.max_completion_length)}


def activations(cfg: Config, arch: ArchConfig, phase: PhasePlan, checkpointing: bool) -> float:
    """Rough activation bytes per GPU for one micro-batch (bf16 hidden states, fp32 logits)."""
    t = arch.text
    seq = phase.prompt_tokens + phase.completion_tokens
    per_layer = 2 * t.hidden_size * (1 if checkpointing else 16)
    hidden = phase.micro_batch * seq * t.num_hidden_layers * per_layer
    logits = phase.micro_batch * phase.completion_tokens * t.vocab_size * 4
    return hidden + logits


def phase_flops(cfg: Config, p: PhasePlan, params: int) -> float:
    """2N FLOPs per token per forward: rollout (1), policy forward+backward (3), reference (1, when
    beta > 0), old log-probs (1, when a rollout feeds several updates); plus the reward sampling."""
    ph = getattr(cfg.evolve, p.name)
    passes = 1 + 3 + (1 if ph.beta > 0 else 0) + (1 if ph.updates_per_step > 1 else 0)
    reward = p.rollouts * p.reward_samples * (p.prompt_tokens + cfg.evolve.max_new_tokens)
    return 2 * params * (passes * p.train_tokens + reward)


def gpus_here() -> int:
    """NVIDIA GPUs this machine exposes (device files; torch is not imported: the plan loads nothing)."""
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def _n(x: float) -> str:
    for unit, div in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def build_plan(cfg: Config, preset: str = "") -> dict:
    """Everything the dry run prints, as data (tests check the numbers, the CLI prints `format_plan`)."""
    ev, hw = cfg.evolve, cfg.hardware
    arch, arch_source = arch_of(cfg)
    counts = param_counts(arch) if arch is not None else None
    model_path = resolve_model(cfg.model)
    n = hw.world_size
    img = image_tokens(ev.max_pixels, arch.vision) if (arch and ev.max_pixels) else None
    prompt = (img or 0) + PROMPT_TEXT_TOKENS
    phases = []
    if ev.train_questioner:
        phases.append(phase_plan("questioner", ev.questioner, n, prompt, ev.reward_samples))
    if ev.reasoner_objective == "grpo":  # under SFT the reasoner has no GRPO phase to size
        phases.append(phase_plan("reasoner", ev.reasoner, n, prompt))
    plan = {
        "preset": preset, "model": cfg.model, "model_path": str(model_path),
        "model_found": (model_path / "config.json").is_file(), "dtype": cfg.dtype,
        "arch_source": arch_source, "params": counts, "hardware": hw, "world_size": n,
        "image_tokens_max": img, "phases": phases, "memory": {}, "memory_lora": {}, "lora": {}, "activations": {},
        "vllm": {}, "prompt_tokens": prompt, "members": member_plans(cfg, prompt) if (ev.committee or ev.reasoner_objective == "sft") else [],
    }
    if counts is not None:
        for ph, phase in ((p, getattr(ev, p.name)) for p in phases):
            trainable = counts.trainable(phase.freeze_vision)
            reward = ph.name == "questioner" and cfg.sampler.in_process
            plan["memory"][ph.name] = {s: memory_per_gpu(counts, trainable, n, s, phase.beta > 0, reward)
                                       for s in STRATEGIES}
            # LoRA: the base weights stay (frozen) in the layout's weight format; gradients and optimizer
            # state are the adapters' only, and the KL reference is the model with its adapters off (no copy)
            rank = phase.lora_rank or PLAN_LORA_RANK
            adapters = lora_params(arch, phase, rank)
            plan["lora"][ph.name] = {"rank": rank, "params": adapters, "on": phase.lora}
            plan["memory_lora"][ph.name] = {s: memory_per_gpu(counts, adapters, n, s, False, reward)
                                            for s in STRATEGIES if s not in SHARDED_WEIGHTS}
            plan["activations"][ph.name] = activations(cfg, arch, ph, phase.gradient_checkpointing)
            plan["vllm"][ph.name] = vllm_share(counts, arch, phase, hw.gpu_memory_gib)
    return plan


def _stage_lines(cfg: Config, plan: dict) -> list[str]:
    """One line (or two) per stage of `STAGES`, in the loop's order."""
    ev, e = cfg.evolve, cfg.eval
    by = {p.name: p for p in plan["phases"]}
    eval_text = f"world '{e.split}' scenes: {e.n} questions, greedy + {e.k} samples each"
    lines = [f"  {BASELINE:<19} {eval_text}"]
    if ev.survey_images:
        lines.append(f"  {'survey':<19} {modes.curriculum(cfg)}")
    lines.append(f"  then {ev.iterations} iteration(s) t = 1..{ev.iterations}:")
    for stage in STAGES:
        name = stage_name("<t>", stage.kind)
        if stage.kind == "questioner" and "questioner" not in by:
            text = ["frozen (evolve.train_questioner=false): the base questioner is reused"]
        elif stage.kind == "questioner":
            text = [f"GRPO on {ev.questioner_images:,} images: {_phase_text(by['questioner'], ev.questioner)}",
                    f"reward: {ev.reward_samples} frozen-reasoner answers per rollout = "
                    f"{_n(by['questioner'].rollouts * ev.reward_samples)} answers of <= {ev.max_new_tokens} tokens"]
        elif stage.kind == "questions":
            text = [f"{ev.images_per_iteration:,} unseen images (the curriculum) x {ev.questions_per_image} question(s), "
                    f"<= {ev.max_new_tokens} tokens, {ev.chunk_size} images per durable part"]
        elif stage.kind == "labels":
            text = [f"{ev.images_per_iteration * ev.questions_per_image:,} questions x {ev.label_samples} answers from "
                    f"{modes.labellers(ev)}; {ev.agreement} agreement; keep agreement in {ev.band_text()}"
                    + ("; labels of every iteration so far" if ev.accumulate_labels else "")]
        elif stage.kind == "reasoner" and ev.reasoner_objective == "sft":
            text = [modes.objective(ev)]
        elif stage.kind == "reasoner":
            text = [f"GRPO on the kept silver labels: {_phase_text(by['reasoner'], ev.reasoner)}"]
        else:
            text = [f"as {BASELINE}, on the new reasoner"]
        lines.append(f"  {name:<19} {text[0]}")
        lines += [f"  {'':<19} {more}" for more in text[1:]]
    return lines


def _phase_text(p: PhasePlan, ph: GRPOPhase) -> str:
    roll = "vLLM " + ph.vllm_mode if ph.use_vllm else "transformers generate"
    roll += f", LoRA rank {ph.lora_rank}" if ph.lora else ""
    return (f"{p.steps} steps x {ph.rollout_prompts} prompts x {ph.num_generations} samples = {_n(p.rollouts)} rollouts "
            f"({roll}); {p.updates} updates of {ph.prompts_per_step} prompts, per GPU {p.micro_batch} completions x "
            f"{p.accumulation} accumulation; lr {ph.lr:g}, KL beta {ph.beta:g}, T {ph.temperature:g}, "
            f"completions <= {ph.max_completion_length} tokens")


def format_plan(cfg: Config, plan: dict) -> str:
    ev, hw, s = cfg.evolve, cfg.hardware, cfg.sampler
    counts: ParamCounts | None = plan["params"]
    out = ["visplay evolve --dry-run: the resolved plan (nothing loaded, downloaded or written)", ""]
    found = "found" if plan["model_found"] else "NOT on disk here: download it before a real run (docs/scaling.md)"
    out.append(f"model      {cfg.model} -> {plan['model_path']} ({found}); weights in {cfg.dtype}")
    if counts is not None:
        tq = counts.trainable(ev.questioner.freeze_vision)
        out.append(f"params     {_n(counts.total)} total = language {_n(counts.language)} (embeddings "
                   f"{_n(counts.embeddings)}) + vision {_n(counts.vision)} + merger {_n(counts.merger)}; "
                   f"trainable {_n(tq)} (shape from {plan['arch_source']})")
    else:
        out.append(f"params     {plan['arch_source']}")
    px = (f"pixels {ev.min_pixels or '-'}..{ev.max_pixels or '-'}"
          + (f" (<= {plan['image_tokens_max']:,} image tokens)" if plan["image_tokens_max"] else ""))
    out.append(f"images     {ev.source}; {px}; parquet image column '{ev.image_column}'")
    out.append(f"loop       {modes.pipeline(cfg)}")
    out += [f"{key:<10} {text}" for key, text in modes.describe(cfg).items()]
    unread = modes.unread(cfg)
    if unread:
        out.append(f"not read   {', '.join(unread)} (set in the preset for another mode; this run ignores them)")
    gpus = gpus_here()
    out.append(f"devices    {gpus} GPU(s) here" if gpus else "devices    CPU: no GPU here, so every stage runs on the CPU "
               "(the GPU sizes below are what the hardware section assumes for a GPU machine)")
    if s.in_process:
        out.append("sampling   transformers, in-process (questions, labels, questioner reward, eval)")
    else:
        out.append(f"sampling   {s.backend}: OpenAI-compatible server {s.url}" + (f", launched per stage: {s.launch}" if s.launch
                                                                      else " (already running)")
                   + f"; {s.concurrency} requests in flight")
    out.append(f"hardware   sized for {hw.nodes} node(s) x {hw.gpus_per_node} GPU(s) = {hw.world_size}, "
               f"{hw.gpu_memory_gib:g} GiB each; GRPO memory layout {launcher_strategy(hw.launcher)} (from the launcher's "
               "config)")
    if hw.launcher:
        out.append(f"GRPO       {hw.launcher} -m visplay.evolve.worker grpo RUN iter<t>/<role>   (launched per phase; "
                   "docs/scaling.md)")
    else:
        out.append("GRPO       in the `visplay evolve` process (hardware.launcher unset)")
    if ev.reasoner_objective == "sft":
        out.append(f"SFT        {_sft_where(cfg)}")
    if hw.generation_shards > 1 and s.in_process:
        out.append(f"generation {hw.generation_shards} shard workers (one per GPU) for questions and labels")
    out += ["", f"stages ({ev.iterations} iteration(s)):"] + _stage_lines(cfg, plan)
    out += ["", "tokens per phase (upper bound: prompts at max_pixels, completions at max length):"]
    for p in plan["phases"]:
        extra = ""
        if p.reward_samples:
            reward = p.rollouts * p.reward_samples * (p.prompt_tokens + ev.max_new_tokens)
            extra = f"; reward sampling {_n(reward)} more"
        flops = phase_flops(cfg, p, counts.total) if counts is not None else 0.0
        hours = flops / (ASSUMED_MFU * hw.peak_tflops * 1e12 * hw.world_size) / 3600
        out.append(f"  {p.name:<10} {_n(p.rollouts)} rollouts x (<= {p.prompt_tokens:,} prompt + <= "
                   f"{p.completion_tokens:,} completion) = <= {_n(p.train_tokens)} tokens{extra}"
                   + (f"; ~{_n(flops)}FLOP, ~{hours:.2g} h at {ASSUMED_MFU:.0%} MFU (assumed)" if flops else ""))
    if plan["memory"]:
        out += ["", f"memory per GPU, GiB (mixed bf16 with fp32 master weights: 16 B/trainable param, layouts in "
                    f"visplay/evolve/plan.py; bf16 KL reference; reward = the frozen reasoner the questioner reward samples "
                    f"in process; N = {hw.world_size}):"]
        out.append(f"  {'phase':<10} {'strategy':<13} {'weights':>7} {'grads':>7} {'optim':>7} {'ref':>7} {'reward':>7} "
                   f"{'total':>7}  + activations (rough)  + vLLM colocate")
        launched = launcher_strategy(hw.launcher)

        def rows(memory: dict, lora: bool) -> None:
            for name, by_strategy in memory.items():
                ph = getattr(ev, name)
                share = plan["vllm"][name]
                vllm = share["bytes"] / GIB if share else 0.0
                for strategy, m in by_strategy.items():
                    mark = " <- the launcher's" if strategy == launched and ph.lora == lora else ""
                    total = m["total"] / GIB + plan["activations"][name] / GIB + vllm
                    fits = "fits" if total <= hw.gpu_memory_gib else "DOES NOT FIT"
                    out.append(f"  {name:<10} {strategy:<13} {_gib(m['weights']):>7} {_gib(m['gradients']):>7} "
                               f"{_gib(m['optimizer']):>7} {_gib(m['reference']):>7} {_gib(m['reward']):>7} "
                               f"{_gib(m['total']):>7}  + {_gib(plan['activations'][name]):>5}  + {vllm:5.1f} = "
                               f"{total:6.1f} {fits}{mark}")

        rows(plan["memory"], lora=False)
        lora = plan["lora"]
        out.append("  with LoRA (" + "; ".join(
            f"{name} rank {v['rank']}{'' if v['on'] else ' if set'}: {_n(v['params'])} adapter params"
            for name, v in lora.items()) + "; only the adapters have gradients and optimizer state, the KL reference"
            " is the model with its adapters off; ZeRO-3/FSDP refused: the saved model is merged on one rank):")
        rows(plan["memory_lora"], lora=True)
        shares = [(name, v) for name, v in plan["vllm"].items() if v]
        if shares:
            out += ["", "vLLM colocate, per GPU (TRL's rollouts; vllm_gpu_memory_utilization of the card, in the "
                        "column above):"]
        for name, v in shares:
            ph = getattr(ev, name)
            room = v["kv_cache"] > 0
            out.append(f"  {name:<10} {ph.vllm_gpu_memory_utilization:g} x {hw.gpu_memory_gib:g} GiB = "
                       f"{_gib(v['bytes'])} GiB: bf16 weights {_gib(v['weights'])} (TP {ph.vllm_tensor_parallel_size}) "
                       + (f"+ KV cache {_gib(v['kv_cache'])} GiB = {_n(v['kv_tokens'])} tokens = {v['sequences']:,} "
                          f"full-length sequences ({ph.max_prompt_length + ph.max_completion_length:,} tokens) at once"
                          if room else "leaves no KV cache: DOES NOT FIT (raise vllm_gpu_memory_utilization or "
                          "vllm_tensor_parallel_size)"))
    out += _member_lines(cfg, plan)
    return "\n".join(out)


def _sft_where(cfg: Config) -> str:
    """Where the SFT objective's members train (`visplay.evolve.committee.member_plan`, in words)."""
    hw, ev = cfg.hardware, cfg.evolve
    who = "each member, one after another, each" if ev.coevolve else "the reasoner (member 0)"
    if hw.launcher:
        return (f"{hw.launcher} -m visplay.evolve.worker sft RUN iter<t>/reasoner MEMBER   ({who} on all "
                f"{hw.world_size} GPU(s); memory layout {launcher_strategy(hw.launcher)})")
    if ev.coevolve and hw.generation_shards > 1:
        return f"co-evolving members at once in worker slots, one GPU each (hardware.generation_shards {hw.generation_shards})"
    return "in the `visplay evolve` process (hardware.launcher unset); on a CPU the members at once, one core each"


def _member_lines(cfg: Config, plan: dict) -> list[str]:
    """The committee's members: shape, labels-stage memory, SFT memory per GPU (full and LoRA)."""
    members, hw, ev = plan["members"], cfg.hardware, cfg.evolve
    if not members:
        return []
    out = ["", f"committee members ({len(members)}; labels: every local member is loaded at once by the in-process "
               "sampler, on each generation GPU; a url= member is served elsewhere, on GPUs of its own):"]
    for m in members:
        c = m["params"]
        size = f"{_n(c.total)} params" if c is not None else "params unknown"
        who = "the reasoner R_{t-1}, " if m["member"] == 0 else ""
        out.append(f"  member {m['member']}  {who}{m['name']}: {size} (shape: {m['arch_source']})")
        if m["served"]:
            need = f"bf16 weights {_gib(2 * c.total)} GiB" if c is not None else "its weights"
            out.append(f"            served at {m['name'][4:]}: needs GPUs of its own ({need} + the server's KV cache), "
                       f"not among the {hw.world_size} here; it never trains")
        elif m["weights"]:
            out.append(f"            labels: weights {_gib(m['weights'])} GiB ({cfg.dtype}) + KV cache <= "
                       f"{_gib(m['kv_cache'])} GiB (sampler.batch_rows {cfg.sampler.batch_rows} rows of <= "
                       f"{plan['prompt_tokens']:,} prompt + {ev.max_new_tokens:,} tokens)")
    local = [m for m in members if m["weights"]]
    if local:
        total = sum(m["weights"] + m["kv_cache"] for m in local) / GIB
        fits = "fits" if total <= hw.gpu_memory_gib else "DOES NOT FIT (lower sampler.batch_rows or serve members: url=)"
        out.append(f"  labels stage per GPU: {len(local)} member(s) at once = {total:.1f} GiB of {hw.gpu_memory_gib:g}: "
                   f"{fits}")
    trained = [m for m in members if m["sft"]]
    if not trained:
        return out
    launched = launcher_strategy(hw.launcher)
    sft = ev.sft
    out += ["", f"SFT per GPU, GiB (one member at a time on all N = {hw.world_size} GPUs; 16 B/trainable param, vision "
                f"tower frozen; no KL reference; batch {sft.batch_size}, "
                f"{'gradient checkpointing' if sft.gradient_checkpointing else 'no gradient checkpointing'}):"]
    out.append(f"  {'member':<7} {'strategy':<13} {'weights':>7} {'grads':>7} {'optim':>7} {'total':>7}  + activations")

    def rows(key: str, lora: bool) -> None:
        for m in trained:
            for strategy, mem in m[key].items():
                total = (mem["total"] + m["sft_activations"]) / GIB
                mark = " <- the launcher's" if strategy == launched and sft.lora == lora else ""
                out.append(f"  {m['member']:<7} {strategy:<13} {_gib(mem['weights']):>7} {_gib(mem['gradients']):>7} "
                           f"{_gib(mem['optimizer']):>7} {_gib(mem['total']):>7}  + {_gib(m['sft_activations']):>5} = "
                           f"{total:6.1f} {'fits' if total <= hw.gpu_memory_gib else 'DOES NOT FIT'}{mark}")

    rows("sft", lora=False)
    out.append("  with LoRA (" + "; ".join(f"member {m['member']} rank {m['sft_lora_rank']}"
                                          f"{'' if sft.lora else ' if set'}: {_n(m['sft_lora_params'])} adapter params"
                                          for m in trained)
               + "; saved merged on one rank, so ZeRO-3/FSDP are refused):")
    rows("sft_lora", lora=True)
    return out
