"""Supervised pretraining of the embedded model on world data, both roles, in the real formats.

Reasoner: question + image -> `<think>a1 red 1. b3 blue -. …</think>\\boxed{answer}` (the marked walk:
every object in reading order with an inline mark, so perception and comparison are dense in the
loss). Only scenes of the labelled levels (``world``: 1..5 objects) are seen; the levels above are
the ladder the loop climbs without labels.
Questioner: instruction + image -> `<type>…</type><question>…</question><answer>…</answer>`.
Runs on `transformers.Trainer` (checkpoints, resume, progress); deterministic from the seed, since
example i is a pure function of (seed, i). The vision tower stays at its random init (a linear probe
reads colours from it perfectly; training it from scratch erased them), only its merger learns.
Run: `visplay pretrain --out models/tiny` (or `make model`); smoke test: `pytest tests/test_tiny.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from visplay.roles.prompts import questioner_messages, questioner_target, reasoner_messages
from visplay.arch import ArchConfig
from visplay.tiny.build import build_model, build_processor, build_tokenizer, tiny_arch
from visplay.worlds.questions import MARKED_FAMILIES, check_families, make_question
from visplay.worlds.trace import WALKS, in_walk_order, target, write_trace
from visplay.worlds.scene import ROWS, WorldConfig, make_scene
from visplay.run.stages import checkpoint_dir
from visplay.models import freeze_vision_tower, load_model, train_resumable, training_args


@dataclass
class PretrainConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    questioner_share: float = 0.1
    describe_share: float = 0.0  # "describe the objects row by row" (the marked walk already lists every object)
    freeze_vision: bool = True
    seed: int = 0
    save_steps: int = 500
    logging_steps: int = 50
    world: WorldConfig = field(default_factory=lambda: WorldConfig(min_objects=1, max_objects=5))  # labelled levels
    families: tuple[str, ...] = MARKED_FAMILIES
    walk: str = "reading"  # order of the marked walk (visplay.worlds.trace.WALKS): rows moves the length wall
    model: ArchConfig = field(default_factory=tiny_arch)  # the shape (a full arch: text + vision)

    def __post_init__(self) -> None:
        check_families(self.families)
        if not (0 <= self.questioner_share and 0 <= self.describe_share and self.questioner_share + self.describe_share <= 1):
            raise ValueError(f"pretrain.questioner_share ({self.questioner_share}) and pretrain.describe_share "
                             f"({self.describe_share}) must be >= 0 and sum to at most 1")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("pretrain.steps and pretrain.batch_size must be >= 1")
        if self.walk not in WALKS:
            raise ValueError(f"pretrain.walk must be one of {', '.join(WALKS)}, got {self.walk!r}")


DESCRIBE = "Describe the objects row by row."


def describe_target(scene) -> str:
    """Every object in reading order with its cell: a dense lesson in finding a cell and reading it."""
    listing = ". ".join(f"{o.cell}: {o.size} {o.colour} {o.shape}" for o in scene.objects) or "none"
    return write_trace(listing, str(len(scene.objects)))


def example(i: int, cfg: PretrainConfig) -> dict:
    """Training example ``i``: a pure function of (seed, i)."""
    rng = random.Random(f"{cfg.seed}:{i}")
    scene = make_scene("train", i, cfg.world)
    q = make_question(scene, rng, cfg.families)
    role = rng.random()
    if role < cfg.questioner_share:
        return {"messages": questioner_messages(), "target": questioner_target(q.qtype, q.text, q.answer), "image": scene.render()}
    if role < cfg.questioner_share + cfg.describe_share:
        return {"messages": reasoner_messages(DESCRIBE), "target": describe_target(scene), "image": scene.render()}
    return {"messages": reasoner_messages(q.text), "image": scene.render(),
            "target": in_walk_order(target(q), cfg.walk, ROWS[:cfg.world.grid])}


class WorldDataset:
    """Map-style dataset (no torch import here: `visplay.config` imports this module for its config)."""

    def __init__(self, cfg: PretrainConfig, size: int):
        self.cfg, self.size = cfg, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return example(i, self.cfg)


class Collator:
    """Tokenise prompt + target; loss only on the target and its end-of-turn token."""

    def __init__(self, processor):
        self.processor = processor
        tok = processor.tokenizer
        self.im_start = tok.convert_tokens_to_ids("<|im_start|>")
        self.pad = tok.pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        p = self.processor
        texts = [
            p.apply_chat_template(it["messages"], add_generation_prompt=True, tokenize=False) + it["target"] + "<|im_end|>"
            for it in items
        ]
        p.tokenizer.padding_side = "right"
        enc = p(text=texts, images=[it["image"] for it in items], padding=True, return_tensors="pt")
        labels = enc["input_ids"].clone()
        for row in range(labels.shape[0]):
            start = (enc["input_ids"][row] == self.im_start).nonzero()[-1].item() + 3  # <|im_start|>assistant\n
            labels[row, :start] = -100
        labels[enc["attention_mask"] == 0] = -100
        enc["labels"] = labels
        return dict(enc)


def init_model_dir(out: Path, cfg: PretrainConfig):
    tokenizer = build_tokenizer(cfg.model.text.vocab_size, cfg.seed)
    processor = build_processor(tokenizer, cfg.world)
    model = build_model(cfg.model, tokenizer, cfg.seed)
    return model, processor


def pretrain(out_dir: str | Path, cfg: PretrainConfig, resume: bool = True, init: str | Path | None = None) -> Path:
    """Train and ``save_pretrained`` to ``out_dir``; checkpoints go to ``out_dir/../<name>.ckpt``.

    ``init``: continue from this model instead of a fresh build -- the compute-matched supervised
    control of `scripts/evolve_study.py` (labelled levels only, no self-labels)."""
    from transformers import Trainer, TrainingArguments

    out = Path(out_dir)
    ckpt_dir = checkpoint_dir(out)
    model, processor = load_model(init) if init is not None else init_model_dir(out, cfg)
    model.train()
    if cfg.freeze_vision:
        freeze_vision_tower(model)
    args = TrainingArguments(
        **training_args(ckpt_dir, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=1.0,
                        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, report_to=[]),
        per_device_train_batch_size=cfg.batch_size, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps, use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=WorldDataset(cfg, cfg.steps * cfg.batch_size),
                      data_collator=Collator(processor))
    return train_resumable(trainer, processor, out, ckpt_dir, resume)
