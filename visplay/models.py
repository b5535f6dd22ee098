"""Load a model + processor from a local `save_pretrained` directory, with clear errors."""

from __future__ import annotations

import json
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
