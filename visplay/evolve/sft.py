"""The reasoner's SFT objective: supervised fine-tuning on the chains that agree with the label.

`evolve.reasoner_objective: sft` (settings: `visplay.evolve.sections.SFTPhase`, the ``evolve.sft_*``
keys) trains R_t on one of its *own* agreeing chains per kept question
(the samples whose answer -- or with `evolve.agreement: trace`, whose whole trace -- matched the
committee), loss on the completion only. It is rejection-sampling SFT with a committee as the
filter: the measured recipe that first gained on unlabelled levels here (docs/experiments.md,
session 8; GRPO on the same labels rewards any chain that reaches the answer, including chains whose
listing is wrong). With a co-evolving committee every member trains the same way; which member
trains where (in process or in worker slots) is `visplay.evolve.committee`'s, one member's
fine-tuning is `fine_tune` here. Runs on `transformers.Trainer`: checkpoints, resume mid-phase, the
model saved atomically with its card. `visplay self-train` fine-tunes through `train_sft` too.

The same `train_sft` runs in the loop's process or on every rank of ``hardware.launcher`` (`visplay.evolve.worker
sft`): the Trainer takes accelerate's DDP / DeepSpeed / FSDP from the launcher's environment, ``sft_batch_size``
stays the global batch (`sft_batches` splits it over the processes and into gradient accumulation), and only
the main rank writes the model (`visplay.models.train_resumable`, every rank joining a ZeRO-3/FSDP gather).
With ``sft_lora_rank > 0`` the model is wrapped by peft with `visplay.evolve.lora.peft_config` (adapters on the
language model and the merger), the Trainer's checkpoints hold the adapter alone (what a resume continues from)
and the result is saved merged: a plain HF checkpoint.
Test: `pytest tests/test_committee.py tests/test_selftrain.py tests/test_lora.py tests/test_shards.py`.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from visplay.dist import Ranks
from visplay.model_files import dress_checkpoint
from visplay.models import (checkpointing_arg, finished_phase, freeze_vision_tower, load_model, train_resumable,
                            training_args)
from visplay.evolve.lora import peft_config
from visplay.roles.prompts import reasoner_messages
from visplay.data.images import image_id
from visplay.evolve.sections import SFTPhase
from visplay.evolve.rows import from_png
from visplay.io import image_bytes
from visplay.run.stages import checkpoint_dir
from visplay.tiny.pretrain import Collator


def chain_rows(rows: Sequence[dict], member: int = 0, seed: int = 0) -> list[dict]:
    """One SFT row (messages, target, image) per kept question that has an agreeing chain of
    committee member ``member``; the chain is picked by a per-question rng seeded by the image's
    content and the question (never its id), so it is reproducible and the same rows make the same
    SFT data whatever source they came from (a world scene or the same picture in a folder).

    >>> from visplay.evolve.rows import png_bytes
    >>> from PIL import Image
    >>> r = {"kept": True, "question": "q?", "image_id": "x", "sample": 0, "image_png": png_bytes(Image.new("RGB", (2, 2))),
    ...      "chains": [["<think>a</think>\\\\boxed{1}"], []]}
    >>> [len(chain_rows([r], m)) for m in (0, 1)]
    [1, 0]
    """
    out = []
    for r in rows:
        mine = _agreeing(r, member)
        if not mine:
            continue
        rng = random.Random(f"chain:{seed}:{image_id(image_bytes(r['image_png']))}:{r['question']}#{r['sample']}")
        out.append({"messages": reasoner_messages(r["question"]), "target": rng.choice(mine),
                    "image": from_png(r["image_png"])})
    return out


def _agreeing(row: dict, member: int) -> list[str]:
    chains = row.get("chains") or []
    return list(chains[member]) if row.get("kept") and member < len(chains) else []


def n_chains(rows: Sequence[dict], member: int = 0) -> int:
    """How many SFT rows `chain_rows` makes for ``member`` (without decoding an image)."""
    return sum(1 for r in rows if _agreeing(r, member))


def sft_batches(batch_size: int, world: int, per_device: int | None = None) -> tuple[int, int]:
    """(rows per forward/backward per process, gradient accumulation steps) for a global batch of
    ``batch_size`` rows on ``world`` processes, ``per_device`` at a time (None: all of a process's share).

    >>> sft_batches(16, 8), sft_batches(16, 8, 1), sft_batches(4, 1)
    ((2, 1), (1, 2), (4, 1))
    """
    if batch_size % world:
        raise ValueError(f"evolve.sft_batch_size {batch_size} does not split over {world} processes: make it a "
                         "multiple of the launcher's process count")
    per_rank = batch_size // world
    micro = per_device or per_rank
    if per_rank % micro:
        raise ValueError(f"evolve.sft_per_device_batch {micro} must divide the {per_rank} rows each of the "
                         f"{world} processes gets per update (evolve.sft_batch_size {batch_size})")
    return micro, per_rank // micro


def sft_trainer(model, processor, rows: list[dict], ckpt_dir: Path, *, steps: int, batch_size: int, lr: float,
                seed: int, schedule: str = "constant", warmup: float = 0.0, per_device_batch: int | None = None,
                gradient_checkpointing: bool = False, lora=None, bf16: bool = False, world: int = 1, **overrides):
    """The `transformers.Trainer` of one SFT phase of ``steps`` updates of ``batch_size`` rows over ``world``
    processes (`sft_batches`), checkpointing to ``ckpt_dir``; with ``lora`` (a phase whose lora_rank > 0) the
    model is first wrapped by peft (`visplay.evolve.lora.peft_config`), else its vision tower is frozen.
    ``overrides`` go to `TrainingArguments` as is (the GPU benchmark turns saving off)."""
    import torch  # heavy: only where a model is trained
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    micro, accumulation = sft_batches(batch_size, world, per_device_batch)
    adapters = peft_config(lora) if lora is not None else None
    if adapters is not None:  # the same adapters on every rank and in every process: seeded before they are drawn
        from peft import get_peft_model

        set_seed(seed)
        model = get_peft_model(model, adapters)  # every base weight frozen; adapters on the LM and the merger
    else:
        freeze_vision_tower(model)
    model.train()
    bf16 = bf16 and torch.cuda.is_available()
    kw = dict(
        **training_args(ckpt_dir, steps=steps, lr=lr, weight_decay=0.0, max_grad_norm=1.0,
                        save_steps=max(1, steps // 4), save_total_limit=2, seed=seed, report_to=[]),
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        lr_scheduler_type=schedule, warmup_steps=round(warmup * steps), logging_steps=10, bf16=bf16,
        use_cpu=not torch.cuda.is_available(), **{checkpointing_arg(): gradient_checkpointing},
        **({f"{checkpointing_arg()}_kwargs": {"use_reentrant": False}} if gradient_checkpointing else {}),
        remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=TrainingArguments(**{**kw, **overrides}), train_dataset=list(rows),
                      data_collator=Collator(processor))
    trainer.remove_callback(PrinterCallback)  # the loop's console stays quiet; the history goes to metrics.jsonl
    return trainer


def train_sft(model, processor, rows: list[dict], out_dir: Path, *, epochs: int, batch_size: int, lr: float,
              seed: int, schedule: str = "constant", warmup: float = 0.0, dress=None, per_device_batch: int | None = None,
              gradient_checkpointing: bool = False, lora=None, bf16: bool = False,
              ranks: Ranks | None = None) -> tuple[Path, list[dict]]:
    """Fine-tune on ``rows`` (messages, target, image; e.g. from `chain_rows`), loss on the target
    only, ``batch_size`` rows an update over all processes, and save to ``out_dir`` atomically; checkpoints in
    ``out_dir.ckpt`` (a killed phase resumes there; a finished one is not rerun). ``lora``: a phase
    with LoRA settings (`SFTPhase`) whose rank > 0 trains adapters, saved merged. ``ranks``: every rank of a
    launcher runs this, the main rank writes. Returns the model directory and the log history."""
    out_dir = Path(out_dir)
    ckpt_dir = checkpoint_dir(out_dir)
    main = ranks is None or ranks.main
    done = finished_phase(out_dir)
    if done is not None:
        if main:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return out_dir, list(done.get("log_history", []))
    steps = max(1, math.ceil(len(rows) / batch_size) * epochs)
    trainer = sft_trainer(model, processor, rows, ckpt_dir, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                          schedule=schedule, warmup=warmup, per_device_batch=per_device_batch,
                          gradient_checkpointing=gradient_checkpointing, lora=lora, bf16=bf16,
                          world=ranks.world if ranks else 1)
    history = lambda: [dict(h) for h in trainer.state.log_history]  # noqa: E731
    train_resumable(trainer, processor, out_dir, ckpt_dir, record=lambda: {"log_history": history()}, dress=dress,
                    ranks=ranks)
    model.eval()
    if main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return out_dir, history()


def fine_tune(start: Path, data: list[dict], out_dir: Path, phase: SFTPhase, *, seed: int, title: str, card: dict,
              max_new_tokens: int, bf16: bool = False, ranks: Ranks | None = None) -> Path:
    """One model's SFT step: the model at ``start`` fine-tuned on ``data`` (`chain_rows`) with ``phase``
    (full or LoRA), saved to ``out_dir`` with its model card (``title``, ``card``) and generation defaults;
    ``bf16``: autocast on a GPU over fp32 master weights; ``ranks``: on every rank of a launcher."""
    import torch  # heavy: only where a model is trained

    model, processor = load_model(start, dtype=torch.float32)
    train_sft(model, processor, data, out_dir, epochs=phase.epochs, batch_size=phase.batch_size, lr=phase.lr,
              schedule=phase.schedule, warmup=phase.warmup, seed=seed, per_device_batch=phase.per_device_batch,
              gradient_checkpointing=phase.gradient_checkpointing, lora=phase, bf16=bf16, ranks=ranks,
              dress=lambda tmp: dress_checkpoint(tmp, title, card, tokenizer=processor.tokenizer,
                                                 max_new_tokens=max_new_tokens, card_dir=out_dir))
    return out_dir
