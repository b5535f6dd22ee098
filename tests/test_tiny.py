"""The embedded model: offline build round-trips through HF Auto classes; pretraining smoke run.

`pytest tests/test_tiny.py` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from dataclasses import replace
from visplay.tiny.build import SPECIAL_TOKENS, tiny_arch
from visplay.tiny.pretrain import Collator, PretrainConfig, example, pretrain
from visplay.worlds.scene import WorldConfig, make_scene

from conftest import MICRO


def test_round_trip_with_auto_classes(micro_model_dir, micro):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = micro
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    tok = processor.tokenizer
    for t in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id and len(tok.tokenize(t)) == 1
    cfg = json.loads((micro_model_dir / "config.json").read_text())
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    text = "<think>b2 d4</think>\\boxed{2}"
    assert tok.decode(tok(text)["input_ids"]) == text
    again = AutoModelForImageTextToText.from_pretrained(micro_model_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert AutoProcessor.from_pretrained(micro_model_dir).tokenizer.get_vocab() == tok.get_vocab()


def test_image_is_one_token_per_cell(micro):
    _, processor = micro
    from visplay.worlds.scene import make_scene

    s = make_scene("train", 0, WorldConfig(grid=5))
    enc = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[s.render()], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 10, 10]]
    assert (enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum() == 25


def test_rope_keeps_slow_pairs_for_content_lookup():
    """Copying a cell name from the question, or finding the visual token whose marks say "c3", is a
    content match over 20-60 tokens: it needs rotary pairs that barely turn over that distance.
    With theta 20 (our first models) the slowest pair turned 0.055 rad per position and neither
    look-up was ever learned; cells are found by their drawn marks (scene.cell_marks), not by M-RoPE."""
    text = tiny_arch().text
    head_dim = text.hidden_size // text.num_attention_heads
    slowest = text.rope_theta ** (-2 * (head_dim // 2 - 1) / head_dim)
    assert slowest * 60 < 0.05
    assert WorldConfig().cell_marks


def test_bad_mrope_section():
    with pytest.raises(ValueError, match="mrope_section"):
        replace(tiny_arch().text, mrope_section=(8, 8, 8))


def test_collator_masks_prompt(micro):
    _, processor = micro
    cfg = PretrainConfig(model=MICRO)
    batch = Collator(processor)([example(i, cfg) for i in range(4)])
    tok = processor.tokenizer
    for row in range(4):
        kept = batch["labels"][row][batch["labels"][row] != -100]
        text = tok.decode(kept)
        assert text.endswith("<|im_end|>") and ("<think>" in text or "<type>" in text)
        assert "Reason in" not in text and "<|image_pad|>" not in text


def test_pretrain_smoke_saves_and_resumes(tmp_path):
    cfg = PretrainConfig(steps=6, batch_size=4, save_steps=3, logging_steps=1, warmup_steps=1, model=MICRO)
    out = pretrain(tmp_path / "m", cfg)
    from visplay.models import load_model

    model, _ = load_model(out)
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())
    ckpts = sorted((tmp_path / "m.ckpt").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-3", "checkpoint-6"]
    # The vision tower is frozen at its init, its merger trains.
    from visplay.tiny.pretrain import init_model_dir

    init, _ = init_model_dir(tmp_path, cfg)
    sd, sd0 = model.state_dict(), init.state_dict()
    blocks = [k for k in sd if ".visual.blocks." in f".{k}"]
    merger = [k for k in sd if ".merger." in k]
    assert blocks and all(torch.equal(sd[k], sd0[k]) for k in blocks)
    assert any(not torch.equal(sd[k], sd0[k]) for k in merger)
    # Resuming a finished run trains nothing more and gives the same weights.
    again = pretrain(tmp_path / "m", cfg)
    model2, _ = load_model(again)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_a_pretraining_killed_after_a_checkpoint_resumes_there_quietly_to_the_same_weights(tmp_path, capfd):
    """A phase interrupted after checkpoint-3 continues from it (`train_resumable`) to the weights of
    an uninterrupted run, without the Trainer's warning that every weight is missing (its legacy key
    names; `restore_weights` loads them)."""
    from visplay.models import load_model

    cfg = PretrainConfig(steps=6, batch_size=4, save_steps=3, logging_steps=1, warmup_steps=1, model=MICRO)
    whole, _ = load_model(pretrain(tmp_path / "whole", cfg))
    pretrain(tmp_path / "cut", cfg)
    shutil.rmtree(tmp_path / "cut")  # as if killed after checkpoint-3 was written
    shutil.rmtree(tmp_path / "cut.ckpt" / "checkpoint-6")
    capfd.readouterr()
    resumed, _ = load_model(pretrain(tmp_path / "cut", cfg))
    said = "".join(capfd.readouterr())
    assert "missing keys" not in said and "unexpected keys" not in said
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_examples_are_deterministic():
    cfg = PretrainConfig()
    a, b = example(5, cfg), example(5, cfg)
    assert a["target"] == b["target"] and a["messages"] == b["messages"]


def test_describe_examples_list_every_object_in_reading_order():
    from visplay.tiny.pretrain import DESCRIBE, PretrainConfig, example
    from visplay.worlds.scene import make_scene

    cfg = PretrainConfig(describe_share=0.5, questioner_share=0.0)
    seen = 0
    for i in range(40):
        ex = example(i, cfg)
        if DESCRIBE not in ex["messages"][0]["content"][0]["text"]:
            continue
        seen += 1
        scene = make_scene("train", i, cfg.world)
        cells = re.findall(r"([a-h][1-8]): ", ex["target"])
        assert cells == [o.cell for o in scene.objects]  # row-major, every object once
        assert ex["target"].endswith(f"\\boxed{{{len(scene.objects)}}}")
    assert 10 <= seen <= 30
    with pytest.raises(ValueError, match="describe_share"):
        PretrainConfig(describe_share=0.9, questioner_share=0.2)


def test_pretraining_sees_only_the_labelled_levels():
    cfg = PretrainConfig()
    levels = {make_scene("train", i, cfg.world).level for i in range(300)}
    assert levels == set(range(cfg.world.min_objects, cfg.world.max_objects + 1)) == {1, 2, 3, 4, 5}
    targets = [example(i, cfg)["target"] for i in range(60)]
    assert all("<think>" in t or "<question>" in t for t in targets)
    assert sum("<question>" in t for t in targets) < 20  # questioner share 0.1


def test_pretrain_can_continue_from_a_model(micro_model_dir, tmp_path):
    """The supervised control of scripts/evolve_study.py: more steps of the recipe from a given model."""
    from visplay.models import load_model

    cfg = PretrainConfig(steps=2, batch_size=2, warmup_steps=0, logging_steps=1, save_steps=2, model=MICRO)
    out = pretrain(tmp_path / "c", cfg, init=micro_model_dir)
    before, proc0 = load_model(micro_model_dir)
    after, proc1 = load_model(out)
    assert proc0.tokenizer.get_vocab() == proc1.tokenizer.get_vocab()  # the init's tokenizer, not a rebuilt one
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed and not any(".visual.blocks." in f".{k}" for k in changed)
