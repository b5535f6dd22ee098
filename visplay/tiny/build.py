"""Build the embedded tiny Qwen2.5-VL offline: tokenizer, processor and a random-init model.

No hub is reachable, so the tokenizer is a byte-level BPE trained on the world's own text, with
Qwen's special tokens and a Qwen-style chat template; the model is the real
`Qwen2_5_VLForConditionalGeneration`, so TRL, vLLM and `save_pretrained` work unchanged.
Run: `python -m visplay.tiny.build OUT_DIR`; test: `pytest tests/test_tiny.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from visplay.roles.prompts import QUESTIONER_INSTRUCTION, REASONER_INSTRUCTION, questioner_target
from visplay.worlds.questions import make_question
from visplay.worlds.scene import WorldConfig, make_scene

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the embedded model. ``rope_theta`` 1e4 keeps slowly turning rotary pairs, which
    content look-ups (copying a cell name, finding a cell by its drawn marks) need; theta 20 made
    positions visible to M-RoPE but those look-ups unlearnable (docs/experiments.md, session 3)."""

    vocab_size: int = 600
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 768
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] = (4, 14, 14)
    vision_hidden: int = 128
    vision_depth: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 256
    world: WorldConfig = field(default_factory=WorldConfig)

    def __post_init__(self) -> None:
        head_dim = self.hidden_size // self.heads
        if self.hidden_size % self.heads or sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(
                f"mrope_section {self.mrope_section} must sum to head_dim/2 = {head_dim // 2} "
                f"(hidden_size {self.hidden_size} / heads {self.heads})"
            )


def corpus(n_scenes: int = 3000, seed: int = 0, world: WorldConfig = WorldConfig()) -> list[str]:
    """Text the tokenizer learns from: both roles' prompts and targets over random scenes."""
    rng = random.Random(seed)
    texts = [QUESTIONER_INSTRUCTION, REASONER_INSTRUCTION, "user\n", "assistant\n", "system\n"]
    for i in range(n_scenes):
        q = make_question(make_scene("train", i, world), rng)
        texts += [q.text, q.target, questioner_target(q.qtype, q.text, q.answer)]
    return texts


def build_tokenizer(cfg: TinyModelConfig, seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed, world=cfg.world), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=2048,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer, world: WorldConfig):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    px = world.image_px * world.image_px
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": px, "longest_edge": px}, patch_size=14, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(size={"shortest_edge": px, "longest_edge": px}, patch_size=14, merge_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=CHAT_TEMPLATE
    )


def build_model(cfg: TinyModelConfig, tokenizer, seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": list(cfg.mrope_section)},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=cfg.vision_depth,
        hidden_size=cfg.vision_hidden,
        num_heads=cfg.vision_heads,
        intermediate_size=cfg.vision_intermediate,
        out_hidden_size=cfg.hidden_size,
        fullatt_block_indexes=list(range(cfg.vision_depth)),
        window_size=112,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def build(out_dir: str | Path, cfg: TinyModelConfig = TinyModelConfig(), seed: int = 0) -> Path:
    """Write a random-init tiny model + processor to ``out_dir`` (HF ``save_pretrained`` layout)."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(cfg, seed)
    processor = build_processor(tokenizer, cfg.world)
    model = build_model(cfg, tokenizer, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


if __name__ == "__main__":
    import sys

    print(build(sys.argv[1]))
