"""Load a model + processor from a local `save_pretrained` directory, with clear errors."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path


class ModelError(ValueError):
    pass


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


def last_checkpoint(ckpt_dir: Path) -> str | None:
    done = [d for d in ckpt_dir.glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
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


def train_resumable(trainer, processor, out_dir: Path, ckpt_dir: Path, resume: bool = True) -> Path:
    """Run an HF/TRL trainer from its last complete checkpoint in ``ckpt_dir`` (if any), then
    ``save_pretrained`` model + processor to ``out_dir`` atomically (temp dir + rename)."""
    import shutil

    ckpt = last_checkpoint(ckpt_dir) if resume else None
    if ckpt:
        restore_weights(trainer.model, ckpt)
    with denormals_flushed():
        trainer.train(resume_from_checkpoint=ckpt)
    model = trainer.model
    model.model.rope_deltas = None
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
