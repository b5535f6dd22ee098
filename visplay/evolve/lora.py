"""LoRA for a GRPO phase (``evolve.<role>.lora_rank > 0``) and for the SFT objective
(``evolve.sft_lora_rank > 0``): the ``peft_config``, its size, the layouts it refuses, and the merge.

TRL's `GRPOTrainer` wraps the policy with `peft.get_peft_model` when given a ``peft_config``; the
KL reference is then the same model with its adapters switched off (no second copy in memory). A
phase's result is saved *merged* (`merged_model`), a plain HF checkpoint, so eval, `visplay serve`,
vLLM and the next iteration load it unchanged; only the Trainer's own mid-phase checkpoints hold
the adapter alone, which is what `--resume` continues from.

Adapters go on the language model's linear layers named by ``lora_target_modules`` (default: all
seven of every decoder layer), on the merger (which full fine-tuning trains even with a frozen
vision tower) and, when ``freeze_vision`` is false, on the vision blocks' linear layers. The SFT objective (`visplay.evolve.sft.train_sft`) wraps its model
with the same config through `peft.get_peft_model` itself and saves the same way.
Test: `pytest tests/test_lora.py`.
"""

from __future__ import annotations

from pathlib import Path

from visplay.arch import ArchConfig
from visplay.evolve.sections import GRPOPhase, SFTPhase

#: A phase with LoRA settings (lora_rank, lora_scale_alpha, lora_dropout, lora_target_modules, freeze_vision).
LoraPhase = GRPOPhase | SFTPhase

#: The vision blocks' linear layers (attention qkv/proj, SwiGLU MLP), adapted when the tower trains.
VISION_MODULES = ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def target_pattern(phase: LoraPhase) -> str:
    """The full-match regex of module names that get adapters (peft's ``target_modules`` as a string).

    >>> import re
    >>> pat = target_pattern(GRPOPhase(lora_rank=8, lora_target_modules=("q_proj", "down_proj")))
    >>> [bool(re.fullmatch(pat, n)) for n in ("model.language_model.layers.3.self_attn.q_proj",
    ...     "model.language_model.layers.3.mlp.down_proj", "model.visual.blocks.0.mlp.down_proj",
    ...     "model.visual.merger.mlp.2", "lm_head")]
    [True, True, False, True, False]
    """
    lm = "|".join(sorted(phase.lora_target_modules))
    parts = [rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({lm})", r".*visual\.merger\.mlp\.[02]"]
    if not phase.freeze_vision:
        parts.append(r".*visual\.blocks\.\d+\.(" + "|".join(m.replace(".", r"\.") for m in VISION_MODULES) + ")")
    return "|".join(f"(?:{p})" for p in parts)


def peft_config(phase: LoraPhase):
    """The `peft.LoraConfig` TRL (or the SFT) wraps the policy with, or None when the phase trains every parameter."""
    if not phase.lora:
        return None
    from peft import LoraConfig  # here, not at the top: the dry-run plan imports this module and loads no torch

    return LoraConfig(r=phase.lora_rank, lora_alpha=phase.lora_scale_alpha, lora_dropout=phase.lora_dropout,
                      target_modules=target_pattern(phase), bias="none", task_type="CAUSAL_LM")


def lora_params(arch: ArchConfig, phase: LoraPhase, rank: int | None = None) -> int:
    """Trainable parameters of the adapters at ``rank`` (default the phase's): r x (in + out) per adapted
    linear layer. Equals what peft builds (tests/test_lora.py counts it on the real class)."""
    r = phase.lora_rank if rank is None else rank
    t, v = arch.text, arch.vision
    h, kv = t.hidden_size, t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, t.intermediate_size), "up_proj": (h, t.intermediate_size),
              "down_proj": (t.intermediate_size, h)}
    total = t.num_hidden_layers * sum(sum(shapes[m]) for m in phase.lora_target_modules)
    m = v.hidden_size * v.spatial_merge_size ** 2
    total += (m + m) + (m + h)  # merger: mlp.0 (m -> m), mlp.2 (m -> text hidden)
    if not phase.freeze_vision:
        vh, vi = v.hidden_size, v.intermediate_size
        total += v.depth * ((vh + 3 * vh) + (vh + vh) + 2 * (vh + vi) + (vi + vh))
    return r * total


#: Memory layouts (`visplay.evolve.plan.LAYOUTS`) that shard the weights themselves: the merge needs them whole.
SHARDED_WEIGHTS = ("zero3", "fsdp")


def check_lora_layout(phase: LoraPhase, key: str, strategy: str) -> None:
    """A ValueError when a LoRA phase would run under a layout that shards the weights (ZeRO-3, FSDP):
    the adapters are merged into the saved model on one rank, which needs every weight there. ``key``
    is the phase's rank setting (``evolve.reasoner.lora_rank``, ``evolve.sft_lora_rank``)."""
    if phase.lora and strategy in SHARDED_WEIGHTS:
        raise ValueError(
            f"{key}={phase.lora_rank} needs whole weights on every GPU to merge the adapters into the "
            f"saved model, but the memory layout of hardware.launcher's accelerate config is {strategy}, which shards "
            "them: launch with configs/accelerate/zero2.yaml or multi_gpu.yaml (LoRA's gradients and optimizer "
            f"state are small), or set {key}=0")


def merged_model(model):
    """``model`` with its LoRA adapters folded into the weights, as the plain HF model (a model
    without adapters comes back as is)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    return model


def is_adapter_checkpoint(path) -> bool:
    """A Trainer checkpoint of a LoRA phase holds the adapter only (adapter_config.json), not a model."""
    return (Path(path) / "adapter_config.json").is_file()
