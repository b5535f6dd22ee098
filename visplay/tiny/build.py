"""Build the embedded tiny Qwen2.5-VL offline: tokenizer, processor and a random-init model.

No hub is reachable, so the tokenizer is a byte-level BPE trained on the world's own text, with
Qwen's special tokens and a Qwen-style chat template; the model is the real
`Qwen2_5_VLForConditionalGeneration`, so TRL, vLLM and `save_pretrained` work unchanged.
Run: `python -m visplay.tiny.build OUT_DIR`; test: `pytest tests/test_tiny.py`.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from visplay.arch import ArchConfig, TextArch, VisionArch, random_model
from visplay.roles.prompts import QUESTIONER_INSTRUCTION, REASONER_INSTRUCTION, questioner_target
from visplay.worlds.questions import make_question
from visplay.worlds.scene import WorldConfig, make_scene
from visplay.worlds.trace import target

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


def tiny_arch() -> ArchConfig:
    """The embedded model's shape: a 4-layer, 256-wide Qwen2.5-VL LM (``vocab_size`` is the BPE
    tokenizer's target; the model gets the trained tokenizer's length) over a 2-block vision
    tower. ``rope_theta`` 1e4 keeps slowly turning rotary pairs, which content look-ups (copying a
    cell name, finding a cell by its drawn marks) need; theta 20 made positions visible to M-RoPE
    but those look-ups unlearnable (docs/experiments.md, session 3). ``rms_norm_eps`` and
    ``tokens_per_second`` are transformers' defaults, which the shipped model was built with."""
    text = TextArch(vocab_size=600, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0, mrope_section=(4, 14, 14),
                    rms_norm_eps=1e-5, tie_word_embeddings=True)
    vision = VisionArch(depth=2, hidden_size=128, intermediate_size=256, num_heads=4, fullatt_block_indexes=(0, 1),
                        tokens_per_second=4)
    return ArchConfig(text=text, vision=vision)


def corpus(n_scenes: int = 3000, seed: int = 0, world: WorldConfig = WorldConfig()) -> list[str]:
    """Text the tokenizer learns from: both roles' prompts and targets over random scenes."""
    rng = random.Random(seed)
    texts = [QUESTIONER_INSTRUCTION, REASONER_INSTRUCTION, "user\n", "assistant\n", "system\n"]
    for i in range(n_scenes):
        q = make_question(make_scene("train", i, world), rng)
        texts += [q.text, target(q), questioner_target(q.qtype, q.text, q.answer)]
    return texts


def build_tokenizer(vocab_size: int, seed: int = 0, world: WorldConfig = WorldConfig()):
    """Byte-level BPE of ``vocab_size`` tokens learnt from the world's text (``world``: the scenes
    the corpus is drawn from; the default world made the shipped tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed, world=world), trainer=trainer)
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


def build_model(arch: ArchConfig, tokenizer, seed: int = 0):
    """A randomly initialised `Qwen2_5_VLForConditionalGeneration` of ``arch`` over ``tokenizer``'s ids."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    token_ids = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                 "pad_token_id": ids["<|endoftext|>"], "image_token_id": ids["<|image_pad|>"],
                 "video_token_id": ids["<|video_pad|>"], "vision_start_token_id": ids["<|vision_start|>"],
                 "vision_end_token_id": ids["<|vision_end|>"]}
    arch = replace(arch, text=replace(arch.text, vocab_size=len(tokenizer)))
    return random_model(arch, token_ids, seed=seed)


def build(out_dir: str | Path, arch: ArchConfig | None = None, seed: int = 0, world: WorldConfig = WorldConfig()) -> Path:
    """Write a random-init model of ``arch`` (default: `tiny_arch`) + processor to ``out_dir`` (HF
    ``save_pretrained`` layout)."""
    out = Path(out_dir)
    arch = arch or tiny_arch()
    tokenizer = build_tokenizer(arch.text.vocab_size, seed, world)
    processor = build_processor(tokenizer, world)
    model = build_model(arch, tokenizer, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


if __name__ == "__main__":
    import sys

    print(build(sys.argv[1]))
