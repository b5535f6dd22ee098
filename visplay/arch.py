"""Model shapes without weights: an `ArchConfig` (from a preset) -> HF `Qwen2_5_VLConfig` -> parameter counts.

The real-scale presets carry the architecture of their checkpoint (text + vision), so the dry-run
plan, the memory estimates and the GPU benchmark (`benchmarks/bench_gpu_step.py`) work offline
with no weights: counts come from building the real `Qwen2_5_VLForConditionalGeneration` on
PyTorch's meta device (shapes only, no memory), and `random_model` builds the same shape with
random weights for a benchmark. `downscaled` shrinks an arch to something a CPU runs in seconds
while keeping its structure (GQA ratio, M-RoPE, windowed vision blocks).

    counts = param_counts(load_config("qwen2_5_vl_3b").arch)   # ParamCounts(total=3.75e9, ...)

The shapes themselves (`TextArch`, `VisionArch`, `ArchConfig`) live here too: the config tree's
``arch`` (a real checkpoint's shape) and ``pretrain.model`` (the embedded model's, built by
`visplay.tiny.build`) are both an `ArchConfig`, turned into a `Qwen2_5_VLConfig` by `hf_config`.
Test: `pytest tests/test_scale.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

@dataclass
class TextArch:
    """The language model's shape (HF ``text_config`` of a Qwen2.5-VL checkpoint)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 128000
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers,
               self.num_attention_heads, self.num_key_value_heads) < 1:
            raise ValueError("arch.text sizes must be >= 1")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"arch.text: hidden_size {self.hidden_size} must divide by num_attention_heads "
                              f"{self.num_attention_heads}, which must divide by num_key_value_heads {self.num_key_value_heads}")
        head_dim = self.hidden_size // self.num_attention_heads
        if len(self.mrope_section) != 3 or 2 * sum(self.mrope_section) != head_dim:
            raise ValueError(f"arch.text.mrope_section {list(self.mrope_section)} must be 3 numbers summing to "
                              f"head_dim/2 = {head_dim // 2}")


@dataclass
class VisionArch:
    """The vision tower's shape (HF ``vision_config``; Qwen2.5-ViT defaults)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    tokens_per_second: int = 2

    def __post_init__(self) -> None:
        if min(self.depth, self.hidden_size, self.intermediate_size, self.num_heads, self.patch_size,
               self.spatial_merge_size, self.temporal_patch_size) < 1:
            raise ValueError("arch.vision sizes must be >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"arch.vision.hidden_size {self.hidden_size} must divide by num_heads {self.num_heads}")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"arch.vision.fullatt_block_indexes {bad} are outside 0..{self.depth - 1}")


@dataclass
class ArchConfig:
    """Enough of a checkpoint's config.json to build a randomly initialised model of the same
    shape offline (`visplay.arch`): parameter counts, memory plans and GPU benchmarks need no weights."""

    text: TextArch
    vision: VisionArch = field(default_factory=VisionArch)


#: Qwen2.5-VL's special token ids (the same in every Qwen2.5-VL / MiMo-VL tokenizer).
QWEN_TOKEN_IDS = {
    "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "image_token_id": 151655, "video_token_id": 151656,
}


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by part; ``vision`` excludes the merger (the projector into the LM)."""

    total: int
    vision: int
    merger: int
    language: int  # decoder layers + norms + embeddings + (untied) head
    embeddings: int  # input embeddings (+ the LM head when untied)

    def trainable(self, freeze_vision: bool) -> int:
        return self.total - (self.vision if freeze_vision else 0)


def hf_config(arch: ArchConfig, token_ids: dict[str, int] | None = None):
    """The `transformers.Qwen2_5_VLConfig` of ``arch``; ``token_ids`` default to Qwen's."""
    from transformers import Qwen2_5_VLConfig

    ids = dict(QWEN_TOKEN_IDS, **(token_ids or {}))
    t, v = arch.text, arch.vision
    too_big = {k: i for k, i in ids.items() if i >= t.vocab_size}
    if too_big:
        raise ValueError(f"token ids {too_big} do not fit arch.text.vocab_size {t.vocab_size}; pass token_ids")
    text = dict(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps, tie_word_embeddings=t.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
        bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"],
    )
    vision = dict(
        depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
        patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size,
        window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
        tokens_per_second=v.tokens_per_second, out_hidden_size=t.hidden_size,
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=t.tie_word_embeddings,
        **{k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")},
    )


def _split(named: list[tuple[str, int]], tied: bool) -> ParamCounts:
    vision = sum(n for name, n in named if ".visual." in f".{name}" and ".merger." not in name)
    merger = sum(n for name, n in named if ".merger." in name)
    emb = sum(n for name, n in named if "embed_tokens" in name or (not tied and name.endswith("lm_head.weight")))
    total = sum(n for _, n in named)
    return ParamCounts(total=total, vision=vision, merger=merger, language=total - vision - merger, embeddings=emb)


def param_counts(arch: ArchConfig) -> ParamCounts:
    """Exact counts from the real HF class built on the meta device (no memory, ~1 s for 7B)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    ids = None if arch.text.vocab_size > max(QWEN_TOKEN_IDS.values()) else {k: j for j, k in enumerate(QWEN_TOKEN_IDS)}
    with torch.device("meta"):  # token ids do not change shapes; small vocabularies get small ones
        model = Qwen2_5_VLForConditionalGeneration(hf_config(arch, ids))
    return _split([(name, p.numel()) for name, p in model.named_parameters()], arch.text.tie_word_embeddings)


def analytic_counts(arch: ArchConfig) -> ParamCounts:
    """The same counts from the layer formulas (a cross-check of `param_counts`, and instant)."""
    t, v = arch.text, arch.vision
    h, kv = t.hidden_size, t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    attn = h * h + h + 2 * (h * kv + kv) + h * h  # q (bias), k, v (bias), o (no bias)
    layer = attn + 3 * h * t.intermediate_size + 2 * h  # SwiGLU MLP (no bias) + 2 RMSNorms
    emb = t.vocab_size * h * (1 if t.tie_word_embeddings else 2)
    language = t.num_hidden_layers * layer + h + emb
    vh, vi = v.hidden_size, v.intermediate_size
    block = (3 * vh * vh + 3 * vh) + (vh * vh + vh) + 2 * (vh * vi + vi) + (vi * vh + vh) + 2 * vh
    patch = 3 * v.temporal_patch_size * v.patch_size * v.patch_size * vh
    vision = patch + v.depth * block
    m = vh * v.spatial_merge_size ** 2
    merger = vh + (m * m + m) + (m * h + h)
    return ParamCounts(total=language + vision + merger, vision=vision, merger=merger, language=language,
                       embeddings=emb)


def arch_from_hf(config: dict) -> ArchConfig:
    """An `ArchConfig` from a Qwen2.5-VL ``config.json`` (old flat layout or transformers 5 ``text_config``)."""
    text = config.get("text_config") or config
    rope = text.get("rope_parameters") or text.get("rope_scaling") or config.get("rope_scaling") or {}
    theta = text.get("rope_theta") or rope.get("rope_theta") or config.get("rope_theta") or 1000000.0
    v = config.get("vision_config") or {}
    defaults = VisionArch()
    return ArchConfig(
        text=TextArch(
            vocab_size=text["vocab_size"], hidden_size=text["hidden_size"], intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"], num_attention_heads=text["num_attention_heads"],
            num_key_value_heads=text["num_key_value_heads"],
            max_position_embeddings=text.get("max_position_embeddings", 128000), rope_theta=float(theta),
            mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))), rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        ),
        vision=VisionArch(**{k: (tuple(v[k]) if isinstance(v.get(k), list) else v[k])
                             for k in vars(defaults) if k in v}),
    )


def image_tokens(pixels: int, vision: VisionArch) -> int:
    """LM tokens one image of ``pixels`` pixels becomes (one per merged 28x28 patch for Qwen2.5-VL)."""
    side = vision.patch_size * vision.spatial_merge_size
    return max(1, round(pixels / (side * side)))


def downscaled(arch: ArchConfig, vocab_size: int | None = None) -> ArchConfig:
    """A CPU-sized model with the same structure: 2 text layers (64 wide, same GQA ratio), 2 vision blocks."""
    t, v = arch.text, arch.vision
    heads = 2
    kv = max(1, heads * t.num_key_value_heads // t.num_attention_heads)
    text = replace(t, vocab_size=vocab_size or t.vocab_size, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv, mrope_section=(4, 6, 6))
    vision = replace(v, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=(1,))
    return ArchConfig(text=TextArch(**vars(text)), vision=VisionArch(**vars(vision)))


def random_model(arch: ArchConfig, token_ids: dict[str, int] | None = None, dtype=None, device=None, seed: int = 0):
    """A randomly initialised `Qwen2_5_VLForConditionalGeneration` of this shape, built directly on ``device``."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = hf_config(arch, token_ids)
    with torch.device(device or "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    ids = dict(QWEN_TOKEN_IDS, **(token_ids or {}))
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.generation_config.bos_token_id = ids["bos_token_id"]
    return model
