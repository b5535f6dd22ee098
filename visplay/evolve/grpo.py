"""The GRPO objective: a thin wrapper over TRL's `GRPOTrainer` for both roles, and the loop's
GRPO phase (`train_phase`: its dataset, its rewards, its frozen reasoner).
Settings: `visplay.evolve.sections.GRPOPhase` (``evolve.questioner`` / ``evolve.reasoner``).

The questioner learns from images alone (prompt = instruction + image); its reward samples the
frozen reasoner inside the reward call. The reasoner learns on (image, question, silver label)
rows; the label is a dataset column, so it reaches the reward as a keyword argument. The reward
callables and their weights come from the phase config (`visplay.rewards.registry`). A KL penalty
to the phase's starting model (beta > 0) and a bounded number of steps guard against reward
hacking. Checkpoints are HF `save_pretrained` directories; a phase resumes from its last one.
`grpo_args` maps a `GRPOPhase` (EasyR1 units: rollout batches, global batch) onto `GRPOConfig`,
including TRL's own vLLM rollouts (colocate or server), which are optional (the `[vllm]` extra):
vllm is never imported here, only looked up. ``lora_rank > 0`` hands TRL a LoRA ``peft_config``
(`visplay.evolve.lora`); the phase's model is still saved whole, adapters merged.
`train_phase` is what runs in the loop's process (`visplay.evolve.steps`) or on every rank of a
launched worker (`visplay.evolve.worker grpo`, started by `visplay.evolve.launch.launch_phase`);
`logged_phase` records either's history.
Test: `pytest tests/test_evolve.py tests/test_scale.py tests/test_lora.py`.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from visplay.evolve.sections import GRPOPhase
from visplay.dist import Ranks
from visplay.evolve.context import Context, take_images
from visplay.evolve.lora import peft_config
from visplay.evolve.rows import questioner_dataset, reasoner_dataset, reasoner_rows
from visplay.evolve.seeds import RANK_SEED_STRIDE
from visplay.rewards.registry import build_rewards
from visplay.run.stages import checkpoint_dir, stage_at
from visplay.sampling.factory import for_rank, open_sampler
from visplay.models import (checkpointing_arg, finished_phase, freeze_vision_tower, load_model, suppressed_ids,
                            train_resumable, training_args)
from visplay import console
from visplay.console import quiet_library_warnings
from visplay.dist import current as current_ranks
from visplay.model_files import dress_checkpoint
from visplay.run.publish import phase_card_info


class HealthGuard:
    """Label-free guard: stop a GRPO phase whose policy runs away from its starting model (KL above
    ``max_kl``) or whose sampling entropy collapses (below ``min_entropy`` *and* below half of the
    phase's first logged entropy); remember why. The fall matters, not the level: a confident base
    starts below any fixed floor (models/tiny samples at entropy 0.014-0.017 on its first unlabelled
    level) and would otherwise be stopped at its first step (docs/experiments.md, session 6)."""

    def __init__(self, max_kl: float, min_entropy: float):
        from transformers import TrainerCallback

        guard = self
        self.max_kl, self.min_entropy = max_kl, min_entropy
        self.fired: str | None = None
        self.first_entropy: float | None = None

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                reason = guard.check(logs or {}, state.global_step)
                if reason:
                    control.should_training_stop = True

        self.callback = _Callback()

    def check(self, logs: dict, step: int) -> str | None:
        kl, entropy = logs.get("kl"), logs.get("entropy")
        if entropy is not None and self.first_entropy is None:
            self.first_entropy = entropy
        if self.fired is None and kl is not None and kl > self.max_kl:
            self.fired = f"kl {kl:.3g} > {self.max_kl:g} at step {step}"
        elif (self.fired is None and entropy is not None and entropy < self.min_entropy
              and entropy < 0.5 * self.first_entropy):
            self.fired = (f"entropy {entropy:.3g} < {self.min_entropy:g} (from {self.first_entropy:.3g} at the "
                          f"phase's start) at step {step}")
        return self.fired


#: (logged key, postfix name, decimals) shown on a phase's progress bar, in this order.
POSTFIX = (("reward", "reward", 3), ("kl", "kl", 3), ("questioner/valid", "valid", 2),
           ("reasoner/accuracy", "acc", 2))


def step_postfix(logs: dict) -> str:
    """A progress bar's postfix for one logged GRPO step.

    >>> step_postfix({"reward": 0.2968, "kl": 0.0031, "questioner/valid": 1.0, "loss": 0.1})
    'reward 0.297 kl 0.003 valid 1.00'
    """
    return " ".join(f"{name} {logs[key]:.{d}f}" for key, name, d in POSTFIX if isinstance(logs.get(key), (int, float)))


def phase_progress(label: str):
    """A `TrainerCallback` that draws one bar labelled ``label`` (e.g. ``iter1/questioner``) in
    place of the Trainer's unlabelled one, with `step_postfix` of the latest step; the per-step
    dicts are printed only at `visplay.console` level verbose (they are in ``state.log_history``,
    hence metrics.jsonl, either way)."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class PhaseProgress(TrainerCallback):
        def __init__(self):
            self.bar, self.step = None, 0

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self.step = state.global_step  # > 0 when resumed from a checkpoint
                self.bar = tqdm(total=state.max_steps, initial=self.step, desc=label, unit="step",
                                disable=console.bar_disable(), dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.step)
                self.step = state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if self.bar is None or not logs:
                return
            text = step_postfix(logs)
            if text:
                self.bar.set_postfix_str(text, refresh=True)
            if console.level() == "verbose":
                self.bar.write(f"{label} step {state.global_step}: {logs}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return PhaseProgress()


class VLLMUnavailable(ValueError):
    """A phase asks for vLLM rollouts but vLLM cannot be imported here."""


def check_vllm(phase: GRPOPhase, name: str = "phase") -> None:
    """Raise `VLLMUnavailable` (saying how to install it) when ``phase.use_vllm`` and vLLM is missing.

    Looks the package up without importing it, so the core path never imports vllm.
    """
    import importlib.util

    if phase.use_vllm and importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailable(
            f"{name}.use_vllm is on but vLLM is not installed in this environment: install the extra with "
            "`pip install 'visplay[vllm]'` (TRL's vLLM rollouts, colocate and server mode alike, import vllm in the "
            f"training processes), or turn vLLM rollouts off with --set {name}.use_vllm=false (transformers "
            "generate: fine for small rollout batches; docs/scaling.md section 9)")


def grpo_args(phase: GRPOPhase, output_dir: str | Path, world_size: int = 1, *, use_cpu: bool = True,
              bf16: bool = False, suppress_tokens: list[int] | None = None,
              report_to: list[str] | None = None) -> dict:
    """The `trl.GRPOConfig` keyword arguments for one phase on ``world_size`` processes.

    Pure arithmetic, so the batch and vLLM plumbing is tested without GPUs or vllm:
    ``prompts_per_step x num_generations`` completions per optimizer update are split over the
    processes, ``per_device_batch`` at a time (the rest is gradient accumulation); a rollout batch
    of ``prompts_per_rollout x num_generations`` completions feeds ``updates_per_step`` updates
    (TRL's ``generation_batch_size``), and ``steps`` rollout batches make ``max_steps`` updates.
    """
    per_update = phase.prompts_per_step * phase.num_generations
    if per_update % world_size:
        raise ValueError(f"prompts_per_step x num_generations = {per_update} completions per update do not split "
                         f"over {world_size} processes; make it a multiple of the process count")
    per_rank = per_update // world_size
    micro = phase.per_device_batch or per_rank
    if per_rank % micro:
        raise ValueError(f"per_device_batch {micro} must divide the {per_rank} completions each of the "
                         f"{world_size} processes gets per update")
    updates = phase.updates_per_step
    kw = dict(
        **training_args(output_dir, steps=phase.steps * updates, lr=phase.lr, weight_decay=phase.weight_decay,
                        max_grad_norm=phase.max_grad_norm, save_steps=phase.save_steps * updates, save_total_limit=1,
                        seed=phase.seed, report_to=[r for r in report_to or [] if r != "tensorboard"] or "none"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_rank // micro,
        generation_batch_size=phase.rollout_prompts * phase.num_generations,
        num_generations=phase.num_generations,
        lr_scheduler_type="constant",
        beta=phase.beta,
        temperature=phase.temperature,
        top_k=phase.top_k,
        top_p=phase.top_p,
        max_completion_length=phase.max_completion_length,
        use_cpu=use_cpu,
        bf16=bf16,
        # TRL turns this on by default; it disables the KV cache during rollouts (10x slower on
        # the tiny model) and only pays off for models that do not fit in memory.
        **{checkpointing_arg(): phase.gradient_checkpointing},
        logging_steps=1,
        disable_tqdm=False,  # its bar is replaced by `PhaseProgress` in `build_trainer`
    )
    if phase.use_vllm:
        # vLLM's SamplingParams has no suppress_tokens; real checkpoints do not sample <|image_pad|>.
        kw.update(use_vllm=True, vllm_mode=phase.vllm_mode,
                  vllm_max_model_length=phase.max_prompt_length + phase.max_completion_length)
        if phase.vllm_mode == "colocate":
            kw.update(vllm_gpu_memory_utilization=phase.vllm_gpu_memory_utilization,
                      vllm_tensor_parallel_size=phase.vllm_tensor_parallel_size)
        elif phase.vllm_server_url:
            kw.update(vllm_server_base_url=phase.vllm_server_url)
    elif suppress_tokens:
        kw["generation_kwargs"] = {"suppress_tokens": suppress_tokens}
    if phase.reward_weights is not None:
        kw["reward_weights"] = list(phase.reward_weights)
    return kw


def build_trainer(model, processor, dataset, reward_fns, phase: GRPOPhase, ckpt_dir: Path, log_dir: Path | None = None,
                  report_to: list[str] | None = None, bf16: bool = False, label: str | None = None, **overrides):
    """A `GRPOTrainer` for one phase plus its `HealthGuard`; ``overrides`` go to `GRPOConfig` as is.

    ``reward_fns``: one TRL reward callable or a list (weighted by ``phase.reward_weights``,
    `visplay.rewards.registry.build_rewards`).

    ``bf16`` (GPU only): bf16 autocast over the policy's fp32 master weights -- at lr 1e-6 an update
    is far below bf16's resolution, so the weights must stay fp32 -- and a bf16 reference model.
    The console shows one bar named ``label`` (default: the stage checkpointing to ``ckpt_dir``,
    `visplay.run.stages.stage_at`)."""
    import torch  # heavy: imported when a phase is built, so the loop's modules import without it
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    quiet_library_warnings()

    check_vllm(phase)
    if phase.freeze_vision and not phase.lora:  # LoRA freezes every base weight itself
        freeze_vision_tower(model)
    bf16 = bf16 and torch.cuda.is_available()
    kw = grpo_args(phase, ckpt_dir, current_ranks().world, use_cpu=not torch.cuda.is_available(), bf16=bf16,
                   suppress_tokens=suppressed_ids(processor.tokenizer), report_to=report_to)
    if bf16:
        kw["model_init_kwargs"] = {"dtype": "bfloat16"}  # TRL builds the KL reference model with these
    args = GRPOConfig(**{**kw, **overrides})
    guard = HealthGuard(phase.max_kl, phase.min_entropy)
    callbacks = [guard.callback]
    if log_dir is not None and "tensorboard" in (report_to or []):
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(str(log_dir))))
    trainer = GRPOTrainer(model=model, args=args, reward_funcs=_as_list(reward_fns), train_dataset=dataset,
                          processing_class=processor, callbacks=callbacks, peft_config=peft_config(phase))
    for printer in (ProgressCallback, PrinterCallback):  # both print every step's log dict
        trainer.remove_callback(printer)
    trainer.add_callback(phase_progress(label or stage_at(ckpt_dir)))
    return trainer, guard


def dress_phase(folder: Path, out_dir: Path, role: str, phase: GRPOPhase, start, tokenizer) -> None:
    """Model card, chat template and generation defaults of a phase's model, written into ``folder``
    (the temp folder that becomes ``out_dir``)."""
    title, info = phase_card_info(out_dir, role, phase, start)
    dress_checkpoint(folder, title, info, max_new_tokens=phase.max_completion_length, tokenizer=tokenizer,
                     card_dir=out_dir, sampling=f"GRPO rollouts sampled at temperature {phase.temperature:g}, "
                     f"top_k {phase.top_k}, top_p {phase.top_p:g}.")


def _as_list(reward_fns) -> list:
    return list(reward_fns) if isinstance(reward_fns, (list, tuple)) else [reward_fns]


def train_grpo(model, processor, dataset, reward_fns, phase: GRPOPhase, out_dir: Path, log_dir: Path | None = None,
               report_to: list[str] | None = None, bf16: bool = False, role: str | None = None,
               ranks: Ranks | None = None) -> tuple[Path, list[dict], str | None]:
    """Run one GRPO phase; save the result to ``out_dir`` (atomically).

    Returns the model directory, the log history and why the health guard stopped the phase (or None).

    Checkpoints go to ``out_dir.ckpt``; a phase interrupted mid-way resumes from the last one. A
    phase whose model was already saved (killed before the caller recorded it) is not rerun: its
    history and guard verdict come back from the record saved with the model. ``role`` names the
    model card's role (default: the first reward's ``__name__``); ``ranks``: every rank of a launcher
    runs this (`visplay.evolve.worker`), the main rank writes.
    """
    out_dir = Path(out_dir)
    ckpt_dir = checkpoint_dir(out_dir)
    done = finished_phase(out_dir)
    if done is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return out_dir, list(done.get("log_history", [])), done.get("guard")
    start = getattr(model.config, "_name_or_path", None)
    first = _as_list(reward_fns)[0]
    role = role or getattr(getattr(first, "func", first), "__name__", "phase")
    trainer, guard = build_trainer(model, processor, dataset, reward_fns, phase, ckpt_dir, log_dir, report_to, bf16)
    history = lambda: [dict(h) for h in trainer.state.log_history]  # noqa: E731
    train_resumable(trainer, processor, out_dir, ckpt_dir, record=lambda: {"log_history": history(), "guard": guard.fired},
                    dress=lambda tmp: dress_phase(tmp, out_dir, role, phase, start, processor.tokenizer), ranks=ranks)
    if ranks is None or ranks.main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return out_dir, history(), guard.fired


# -- the loop's GRPO phase --------------------------------------------------------------------------


def label_column(ev) -> str:
    """The column the reasoner's accuracy reward reads: the silver label, or (ablation) the questioner's answer."""
    return "questioner_answer" if ev.labels == "questioner" else "label"


def reward_fns(ctx: Context, role: str, frozen=None, rank: int = 0) -> list:
    """The TRL rewards of a GRPO phase, from its config (built here only, for the loop and every
    worker rank; the questioner's frozen-reasoner samples get a seed per iteration and rank)."""
    ev = ctx.cfg.evolve
    # every sampling knob of the evolve section at once (temperature, top_k, top_p, max_new_tokens), so none is lost
    return build_rewards(getattr(ev, role).rewards, grader=ctx.grader, reasoner=frozen, m=ev.reward_samples,
                         **{**ev.knobs(), "seed": ev.seed + ctx.t + RANK_SEED_STRIDE * rank},
                         threshold=ev.diversity_threshold if ev.diversity_penalty else 1.0)


def phase_dataset(ctx: Context, role: str):
    """The GRPO rows of a phase: unseen images (questioner) or kept silver labels (reasoner)."""
    ev = ctx.cfg.evolve
    if role == "questioner":
        return questioner_dataset(take_images(ctx, ev.questioner_images)[0])
    return reasoner_dataset(reasoner_rows(ctx.run.root, ctx.t, ev.accumulate_labels), label_column(ev))


def train_phase(ctx: Context, role: str, dataset=None) -> tuple[list[dict], str | None]:
    """Train iteration t's ``role`` from the previous one and save it; (log history, guard verdict).

    In the loop's process, or (``ctx.ranks`` set) on every rank of ``hardware.launcher``, where
    the frozen reasoner of the questioner's reward runs on the rank's own GPU."""
    import torch

    cfg, run, stage, ranks = ctx.cfg, ctx.run, ctx.name(role), ctx.ranks
    dataset = phase_dataset(ctx, role) if dataset is None else dataset
    if role == "questioner" and ranks is not None:
        device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else None
        frozen = open_sampler(for_rank(cfg.sampler, ranks.local_rank), ctx.model("reasoner", ctx.t - 1), cfg.dtype,
                              device=device, log_path=run.log_path(stage, f"rank{ranks.rank}.server"))
    elif role == "questioner":
        frozen = ctx.sampler(ctx.model("reasoner", ctx.t - 1), stage=stage)
    else:
        frozen = contextlib.nullcontext()
    # fp32 master weights (bf16 autocast on GPU when cfg.dtype is bfloat16)
    model, processor = load_model(ctx.model(role, ctx.t - 1), dtype=torch.float32)
    main = ranks is None or ranks.main
    with frozen as sampler:
        rewards = reward_fns(ctx, role, sampler, ranks.rank if ranks else 0)
        _, history, guard = train_grpo(model, processor, dataset, rewards, getattr(cfg.evolve, role), run.output(stage),
                                       log_dir=run.tb_dir(stage),
                                       report_to=list(cfg.evolve.report_to) if main else [],
                                       bf16=cfg.dtype == "bfloat16", role=role, ranks=ranks)
    return history, guard


def logged_phase(ctx: Context, role: str, phase: tuple[list[dict], str | None]) -> str | None:
    """Record a finished GRPO phase (log history, guard verdict): history to metrics.jsonl; the verdict back."""
    stage, (history, guard) = ctx.name(role), phase
    for h in history:
        ctx.run.log({"stage": stage, **h})
    if guard:
        ctx.say(f"{stage}: health guard stopped the phase: {guard}")
    return guard
