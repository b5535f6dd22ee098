"""Checks that what a run names exists and loads, before anything is written: the model, the
committee's members, the images, vLLM, the launcher, a sampling server, the rewards.

`preflight(cfg)` runs before the run directory is created (and again on resume), so bad input
-- a preset naming a model that is not on disk, a parquet folder without the image column, a
folder without images, vLLM asked for but not installed, LoRA under a launcher whose accelerate
config shards the weights (ZeRO-3, FSDP: read from that file), a launcher that is not on PATH, a
sampling server that does not answer, a parquet or folder whose every row or file is unusable
-- is one clear error naming the thing, never a half-written stage. The rules between settings
are the config tree's (`visplay.evolve.modes`), checked when the config is loaded.
Test: `pytest tests/test_scale.py tests/test_untrusted_inputs.py`.
"""

from __future__ import annotations

from pathlib import Path

from visplay.config import Config, resolve_model
from visplay.data.sources import ImageSource
from visplay.evolve import committee
from visplay.evolve.context import open_images
from visplay.evolve.lora import check_lora_layout
from visplay.models import ModelError, check_model_dir
from visplay.evolve.plan import launcher_strategy
from visplay.rewards.registry import resolve_reward
from visplay.evolve.grpo import check_vllm
from visplay.evolve.launch import launcher_path
from visplay.sampling.factory import client


def check_images(source: ImageSource, spec: str) -> None:
    """Decode items until one is usable, so a source whose every file or row is unusable fails here,
    with the count and the first reasons, not iterations later as "no unseen images left"."""
    for _ in source:
        return
    n = sum(source.skipped.values())
    if not n:
        raise ValueError(f"image source {spec!r} holds no images")
    counts = ", ".join(f"{k} {v}" for k, v in source.skipped.most_common())
    first = "; ".join(getattr(source.skipped, "first", [])[:3])
    raise ValueError(f"image source {spec!r} has no usable image: all {n} skipped ({counts})"
                     + (f"; first: {first}" if first else ""))


def model_dir(cfg: Config) -> Path:
    """The base model's local directory, or a `ModelError` that says how to get it (nothing is downloaded)."""
    path = resolve_model(cfg.model)
    try:
        return check_model_dir(path)
    except ModelError as e:
        if path.exists() or cfg.model.startswith((".", "/", "~")) or cfg.model.count("/") != 1:
            raise ModelError(f"model {cfg.model!r}: {e}") from e
        raise ModelError(
            f"model {cfg.model!r} is neither a local model directory nor in the local HF cache, and visplay never "
            f"downloads weights. Fetch it first, e.g. `huggingface-cli download {cfg.model} --local-dir DIR`, "
            "then pass --model DIR (or --set model=DIR)") from e


def preflight(cfg: Config) -> Path:
    """Validate everything a run needs before it writes anything; returns the base model directory."""
    base = model_dir(cfg)
    for member in committee.members(cfg):  # a member that does not load is an error before the run exists
        if isinstance(member, str):
            member_cfg, _ = committee.member_sampler(cfg.sampler, member)
            client(member_cfg, timeout=min(cfg.sampler.timeout, 30.0)).preflight()
    check_images(open_images(cfg), cfg.evolve.source)  # ValueError naming the folder/file/column/rows when unusable
    ev = cfg.evolve
    strategy = launcher_strategy(cfg.hardware.launcher)
    for role in ("questioner", "reasoner") if ev.train_questioner else ("reasoner",):
        check_vllm(getattr(ev, role), f"evolve.{role}")
        if role == "questioner" or ev.reasoner_objective == "grpo":
            check_lora_layout(getattr(ev, role), f"evolve.{role}.lora_rank", strategy)
    if ev.reasoner_objective == "sft":
        check_lora_layout(ev.sft, "evolve.sft_lora_rank", strategy)
    for role in ("questioner", "reasoner"):
        for name in getattr(ev, role).rewards:
            try:
                resolve_reward(name)
            except ValueError as e:
                raise ValueError(f"evolve.{role}.rewards: {e}") from e
    if cfg.hardware.launcher:
        _check_program("hardware.launcher", cfg.hardware.launcher, "install it, e.g. `pip install accelerate "
                       "deepspeed`, or set hardware.launcher=null to train in process", launcher_path())
    if cfg.sampler.launch is not None:
        _check_program("sampler.launch", cfg.sampler.launch, "pip install 'visplay[vllm]' puts vllm on this "
                       "environment's PATH; a separate one (requirements/serve-vllm.txt): put its bin/ on PATH or give "
                       "sampler.launch the full path (docs/scaling.md §8)")
    if not cfg.sampler.in_process and cfg.sampler.launch is None:
        client(cfg.sampler, timeout=min(cfg.sampler.timeout, 30.0)).preflight()
    return base


def _check_program(key: str, command: str, fix: str, path: str | None = None) -> None:
    """The program a command template starts (after ``VAR=value`` assignments) is on ``path``
    (default: PATH, which a launched sampling server's shell searches)."""
    import shlex
    import shutil

    program = next((w for w in shlex.split(command) if "=" not in w), "")
    if program != "{python}" and shutil.which(program, path=path) is None:
        raise ValueError(f"{key} runs {program!r}, which is not on PATH ({fix})")
