"""Thin wrapper over TRL's `GRPOTrainer` for both roles: one function, two reward adapters.

The questioner learns from images alone (prompt = instruction + image); its reward samples the
frozen reasoner inside the reward call. The reasoner learns on (image, question, silver label)
rows; the label is a dataset column, so it reaches the reward as a keyword argument. A KL penalty
to the phase's starting model (beta > 0) and a bounded number of steps guard against reward
hacking. Checkpoints are HF `save_pretrained` directories; a phase resumes from its last one.
Test: `pytest tests/test_train.py`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from visplay.answers import Grader
from visplay.config import GRPOPhase
from visplay.models import freeze_vision_tower, train_resumable
from visplay.rewards.questioner import questioner_reward
from visplay.rewards.reasoner import reasoner_reward_parts
from visplay.sampling.base import Sampler


class HealthGuard:
    """Label-free guard: stop a GRPO phase whose policy runs away from its starting model (KL above
    ``max_kl``) or whose sampling entropy collapses (below ``min_entropy``); remember why."""

    def __init__(self, max_kl: float, min_entropy: float):
        from transformers import TrainerCallback

        guard = self
        self.max_kl, self.min_entropy = max_kl, min_entropy
        self.fired: str | None = None

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                reason = guard.check(logs or {}, state.global_step)
                if reason:
                    control.should_training_stop = True

        self.callback = _Callback()

    def check(self, logs: dict, step: int) -> str | None:
        kl, entropy = logs.get("kl"), logs.get("entropy")
        if self.fired is None and kl is not None and kl > self.max_kl:
            self.fired = f"kl {kl:.3g} > {self.max_kl:g} at step {step}"
        elif self.fired is None and entropy is not None and entropy < self.min_entropy:
            self.fired = f"entropy {entropy:.3g} < {self.min_entropy:g} at step {step}"
        return self.fired


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": "..."}]
        return "".join(m.get("content", "") if isinstance(m.get("content"), str) else "" for m in completion)
    return completion


class QuestionerRewardFn:
    """TRL reward adapter; logs `uncertainty`, `diversity_penalty`, `valid`, `agreement` each step."""

    __name__ = "questioner"

    def __init__(self, reasoner: Sampler, grader: Grader, m: int = 10, temperature: float = 1.0, top_k: int = 40,
                 max_new_tokens: int = 64, threshold: float = 0.5, seed: int = 0):
        self.reasoner, self.grader = reasoner, grader
        self.kw = dict(m=m, temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, threshold=threshold)
        self.seed = seed
        self.calls = 0

    def __call__(self, prompts, completions, image, log_metric=None, **_) -> list[float]:
        self.calls += 1
        scores = questioner_reward([_text(c) for c in completions], image, self.reasoner, grader=self.grader,
                                   seed=self.seed + self.calls, **self.kw)
        if log_metric is not None:
            for k, v in scores.means().items():
                if k != "reward":
                    log_metric(f"questioner/{k}", v)
        return scores.reward


class ReasonerRewardFn:
    """TRL reward adapter; logs the `accuracy` and `format` parts."""

    __name__ = "reasoner"

    def __init__(self, grader: Grader):
        self.grader = grader

    def __call__(self, prompts, completions, label, log_metric=None, **_) -> list[float]:
        acc, fmt = reasoner_reward_parts([_text(c) for c in completions], label, self.grader)
        if log_metric is not None:
            log_metric("reasoner/accuracy", sum(acc) / len(acc))
            log_metric("reasoner/format", sum(fmt) / len(fmt))
        return [0.9 * a + 0.1 * f for a, f in zip(acc, fmt)]


def suppressed_tokens(tokenizer) -> list[int]:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return sorted(i for i in tokenizer.all_special_ids if i != eos)


def train_grpo(model, processor, dataset, reward_fn, phase: GRPOPhase, out_dir: Path, log_dir: Path | None = None,
               report_to: list[str] | None = None) -> tuple[Path, list[dict], str | None]:
    """Run one GRPO phase; save the result to ``out_dir`` (atomically).

    Returns the model directory, the log history and why the health guard stopped the phase (or None).

    Checkpoints go to ``out_dir.ckpt``; a phase interrupted mid-way resumes from the last one.
    """
    from trl import GRPOConfig, GRPOTrainer

    if phase.freeze_vision:
        freeze_vision_tower(model)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir.with_name(out_dir.name + ".ckpt")
    args = GRPOConfig(
        output_dir=str(ckpt_dir),
        max_steps=phase.steps,
        per_device_train_batch_size=phase.prompts_per_step * phase.num_generations,
        num_generations=phase.num_generations,
        learning_rate=phase.lr,
        lr_scheduler_type="constant",
        beta=phase.beta,
        temperature=phase.temperature,
        top_k=phase.top_k,
        max_completion_length=phase.max_completion_length,
        generation_kwargs={"suppress_tokens": suppressed_tokens(processor.tokenizer)},
        use_cpu=not torch.cuda.is_available(),
        # TRL turns this on by default; it disables the KV cache during rollouts (10x slower on
        # the tiny model) and only pays off for models that do not fit in memory.
        gradient_checkpointing=phase.gradient_checkpointing,
        logging_steps=1,
        save_steps=phase.save_steps,
        save_total_limit=1,
        report_to=[r for r in report_to or [] if r != "tensorboard"] or "none",
        seed=phase.seed,
        data_seed=phase.seed,
        disable_tqdm=False,
    )
    guard = HealthGuard(phase.max_kl, phase.min_entropy)
    callbacks = [guard.callback]
    if log_dir is not None and "tensorboard" in (report_to or []):
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(str(log_dir))))
    trainer = GRPOTrainer(model=model, args=args, reward_funcs=[reward_fn], train_dataset=dataset,
                          processing_class=processor, callbacks=callbacks)
    train_resumable(trainer, processor, out_dir, ckpt_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return out_dir, [dict(h) for h in trainer.state.log_history], guard.fired
