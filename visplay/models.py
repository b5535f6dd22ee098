"""Load a model + processor from a local `save_pretrained` directory, with clear errors; run a
Trainer from its last complete checkpoint and save its model atomically (`train_resumable`).
Test: `pytest tests/test_tiny.py tests/test_reliability.py`."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

from visplay.dist import Ranks, barrier
from visplay.io import atomic_dir, atomic_write_json
from visplay.evolve.lora import is_adapter_checkpoint, merged_model


#: The chat template's end of turn: the one special token a completion may contain (it ends it).
END_OF_TURN = "<|im_end|>"


class ModelError(ValueError):
    pass


def suppressed_ids(tokenizer) -> list[int]:
    """Special tokens a completion never contains (image pads, chat markers): every special token --
    the tokenizer's named ones and every added token marked special -- but `END_OF_TURN`. The one
    definition for the samplers, the saved generation defaults and GRPO's rollouts, so a model is
    trained on what it is evaluated on."""
    eos = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    extra = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return sorted((set(tokenizer.all_special_ids) | extra) - {eos})


def check_model_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model path {p} does not exist")
    if not (p / "config.json").is_file():
        raise ModelError(f"{p} is not a model directory: config.json is missing")
    try:
        json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{p / 'config.json'} is not valid JSON: {e}") from e
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise ModelError(f"{p} has no weights (*.safetensors)")
    return p


def load_model(path: str | Path, dtype=None):
    """(model, processor) from a directory; the model is in eval mode on CPU unless moved."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    p = check_model_dir(path)
    hf_logging.disable_progress_bar()
    try:
        processor = AutoProcessor.from_pretrained(p)
        model = AutoModelForImageTextToText.from_pretrained(p, dtype=dtype or torch.float32)
    except Exception as e:  # corrupt weights, wrong architecture, truncated files
        raise ModelError(f"could not load the model in {p}: {type(e).__name__}: {e}") from e
    model.eval()
    return model, processor


@contextmanager
def denormals_flushed():
    """Flush subnormal floats to zero while running models on CPU, then switch it back off.

    Confident softmaxes produce subnormals, which make CPU matmuls many times slower. Scoped, so
    code run later in the same process (e.g. hypothesis, which refuses to run under flush-to-zero)
    sees normal IEEE behaviour.
    """
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def freeze_vision_tower(model) -> None:
    for name, param in model.named_parameters():
        if ".visual." in f".{name}" and ".merger." not in name:
            param.requires_grad_(False)


#: Written into a GRPO phase's output folder with the folder itself: the phase's log history and
#: health-guard verdict, so a stage killed after the save but before the manifest update is not retrained.
PHASE_RECORD = "train_result.json"


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest *complete* Trainer checkpoint in ``ckpt_dir``, or None.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint a kill left half-written lacks
    it (or holds a torn one); one half-deleted by checkpoint rotation may lack its weights. Both are
    skipped, so a resume starts from the newest checkpoint that loads.
    """
    def complete(d: Path) -> bool:
        try:
            state = json.loads((d / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return False
        weights = any(d.glob("*.safetensors")) or any(d.glob("*.bin"))
        return isinstance(state, dict) and weights and d.name.split("-")[1].isdigit()

    done = [d for d in Path(ckpt_dir).glob("checkpoint-*") if d.is_dir() and complete(d)]
    return str(max(done, key=lambda d: int(d.name.split("-")[1]))) if done else None


def restore_weights(model, checkpoint: str | Path) -> None:
    """Load a Trainer checkpoint's weights into ``model``, in place.

    transformers 5.23's `Trainer` saves checkpoints with the legacy key names ("visual.*",
    "model.layers.*") but resumes with the new ones, so `resume_from_checkpoint` silently keeps the
    fresh weights (found by tests/test_tiny.py). `from_pretrained` converts the names; we copy from it.
    """
    from transformers import AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise ModelError(f"checkpoint {checkpoint} does not match the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


_TRAINER_KEY_WARNINGS = ("There were missing keys in the checkpoint", "There were unexpected keys in the checkpoint")


@contextmanager
def _trainer_key_warnings_muted():
    """Drop the Trainer's "missing keys / unexpected keys" warnings of a resume whose weights
    `restore_weights` already loaded: they list every weight under its legacy name and read as if the
    resume had lost the model, when it has not (`restore_weights` raises on a real mismatch)."""
    import logging

    log = logging.getLogger("transformers.trainer")
    keep = lambda record: not record.getMessage().startswith(_TRAINER_KEY_WARNINGS)  # noqa: E731
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def training_args(output_dir: str | Path, *, steps: int, lr: float, weight_decay: float, max_grad_norm: float,
                  save_steps: int, save_total_limit: int, seed: int, report_to) -> dict:
    """The Trainer arguments pretraining and GRPO set alike: optimizer steps, checkpoints, and one
    seed for weights and data order, so a resumed run replays the same batches."""
    return dict(output_dir=str(output_dir), max_steps=steps, learning_rate=lr, weight_decay=weight_decay,
                max_grad_norm=max_grad_norm, save_steps=save_steps, save_total_limit=save_total_limit,
                report_to=report_to, seed=seed, data_seed=seed)


def checkpointing_arg() -> str:
    """The `TrainingArguments` name of gradient checkpointing: transformers 5.23 renamed it
    ``activation_checkpointing`` (the old name a deprecated alias); 5.20-5.22 know only
    ``gradient_checkpointing``."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def train_resumable(trainer, processor, out_dir: Path, ckpt_dir: Path, resume: bool = True,
                    record: Callable[[], dict] | None = None, dress: Callable[[Path], None] | None = None,
                    ranks: Ranks | None = None) -> Path:
    """Run an HF/TRL trainer from its last complete checkpoint in ``ckpt_dir`` (if any), then
    save model + processor to ``out_dir`` atomically (temp dir, fsync, rename).

    ``record()``, if given, is saved as ``PHASE_RECORD`` inside the same folder, so it exists
    exactly when the model does; ``dress(folder)`` adds files to it before the rename (the model
    card, `visplay.model_files.dress_checkpoint`). With ``ranks`` (every rank of a launcher runs this),
    the weights are gathered by ``trainer.save_model`` (ZeRO-3/FSDP shards) and only the main rank
    writes. A LoRA phase (a peft model) resumes from its adapter checkpoint and is saved merged."""
    ckpt = last_checkpoint(ckpt_dir) if resume else None
    restored = bool(ckpt) and not is_adapter_checkpoint(ckpt)  # a LoRA phase's adapter: the Trainer loads it
    if restored:
        restore_weights(trainer.model, ckpt)
    with denormals_flushed(), (_trainer_key_warnings_muted() if restored else nullcontext()):
        trainer.train(resume_from_checkpoint=ckpt)
    model = merged_model(trainer.model)  # a LoRA phase's PeftModel is saved as the plain model, adapters merged
    lora = model is not trainer.model
    model.model.rope_deltas = None

    def finish(tmp: Path) -> None:
        processor.save_pretrained(tmp)
        if dress is not None:
            dress(tmp)
        if record is not None:
            atomic_write_json(tmp / PHASE_RECORD, record())

    if ranks is None:
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            finish(tmp)
        return out_dir
    if ranks.main:
        with atomic_dir(out_dir) as tmp:
            barrier(ranks)  # tmp exists: every rank may take part in the (ZeRO-3/FSDP) gather
            if lora:  # whole weights on every rank (LoRA refuses ZeRO-3/FSDP, visplay.evolve.lora.check_lora_layout)
                model.save_pretrained(tmp)
            else:
                trainer.save_model(str(tmp))  # gathers sharded weights; only the main process writes
            finish(tmp)
    else:
        barrier(ranks)
        if not lora:
            trainer.save_model(str(out_dir.with_name(out_dir.name + ".tmp")))  # the folder atomic_dir fills on the main rank
    barrier(ranks)
    return out_dir


def finished_phase(out_dir: Path) -> dict | None:
    """The ``PHASE_RECORD`` of a phase whose model was saved completely to ``out_dir``, else None."""
    try:
        record = json.loads((Path(out_dir) / PHASE_RECORD).read_text())
        check_model_dir(out_dir)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
