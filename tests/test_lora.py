"""LoRA for either role (`evolve.<role>.lora_rank`), on the real HF classes, offline.

Proves: bad LoRA settings are one clear error before anything is written; the adapters peft builds
from `visplay.evolve.lora.peft_config` sit where the docs say and have the size the dry-run plan counts; a
LoRA reasoner phase changes the weights and is saved merged, a plain checkpoint with its card that
`AutoModelForImageTextToText` loads; the tiny loop with `--set evolve.reasoner.lora_rank=8` runs to
the end; and a loop killed in the middle of a LoRA phase resumes to the uncrashed run's weights and
rows. `pytest -q tests/test_lora.py` (about 2 minutes on 2 cores; the kill test is most of it).
"""

from __future__ import annotations

import random
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from visplay.arch import arch_from_hf, downscaled, random_model
from faults import VISPLAY_LOOP
from visplay.cli import main
from visplay.config import EMBEDDED_MODELS, ConfigError, GRPOPhase, load_config
from visplay.evolve.lora import lora_params, peft_config, target_pattern


@pytest.mark.parametrize("override, message", [
    ("evolve.reasoner.lora_rank=-1", "evolve.reasoner: lora_rank must be 0 (off) .. 1024, got -1"),
    ("evolve.reasoner.lora_rank=5000", "lora_rank must be 0 (off) .. 1024, got 5000"),
    ("evolve.reasoner.lora_rank=8.5", "evolve.reasoner.lora_rank: expected int, got 8.5"),
    ("evolve.questioner.lora_alpha=0", "evolve.questioner: lora_alpha must be in (0, 65536] or null"),
    ("evolve.questioner.lora_alpha=-16", "lora_alpha must be in (0, 65536]"),
    ("evolve.reasoner.lora_dropout=1.0", "lora_dropout must be in [0, 1), got 1.0"),
    ("evolve.reasoner.lora_target_modules=[qkv]", "lora_target_modules must name some of the language model's"),
    ("evolve.reasoner.lora_rank=8 evolve.reasoner_objective=sft", "evolve.reasoner.lora_rank=8 is for the reasoner's "
                                                                   "GRPO phase; evolve.reasoner_objective=sft reads "
                                                                   "evolve.sft_lora_rank"),
    ("evolve.sft_lora_rank=-1", "evolve.sft_lora_rank must be 0 (off) .. 1024, got -1"),
    ("evolve.sft_lora_dropout=1.0", "evolve.sft_lora_dropout must be in [0, 1), got 1.0"),
    ("evolve.sft_lora_target_modules=[qkv]", "evolve.sft_lora_target_modules must name some"),
    ("evolve.sft_per_device_batch=8", "evolve.sft_per_device_batch must be in [1, evolve.sft_batch_size (4)]"),
])
def test_bad_lora_settings_are_one_line_before_anything_is_written(override, message, tmp_path, capsys):
    overrides = override.split()
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", overrides)
    run = tmp_path / "run"
    assert main(["evolve", "--run", str(run)] + [a for o in overrides for a in ("--set", o)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not run.exists()


@pytest.mark.parametrize("launcher, strategy", [("zero3.yaml", "zero3"), ("fsdp.yaml", "fsdp")])
@pytest.mark.parametrize("objective", ["grpo", "sft"])
def test_lora_with_sharded_weights_is_refused_before_anything_is_written(launcher, strategy, objective,
                                                                          micro_model_dir, tmp_path, capsys):
    """GRPO's LoRA and the SFT objective's alike: the merge needs whole weights on one rank."""
    run = tmp_path / "run"
    if objective == "grpo":
        overrides, key = [*VISPLAY_LOOP, "evolve.reasoner.lora_rank=8"], "evolve.reasoner.lora_rank"
    else:  # the default preset's committee SFT
        overrides, key = ["evolve.sft_lora_rank=8"], "evolve.sft_lora_rank"
    argv = ["evolve", "--run", str(run), "--model", str(micro_model_dir), *[a for o in overrides for a in ("--set", o)],
            "--set", f"hardware.launcher='accelerate launch --config_file {{repo}}/configs/accelerate/{launcher}'"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{key}=8 needs whole weights on every GPU" in err and f"is {strategy}" in err, err
    assert f"or set {key}=0" in err and len(err.splitlines()) == 1 and not run.exists()


def test_adapters_sit_where_documented_and_have_the_counted_size():
    """peft's trainable parameters equal `lora_params` (what the plan counts), with and without the vision tower."""
    from peft import get_peft_model

    arch = arch_from_hf(__import__("json").loads((EMBEDDED_MODELS["tiny"] / "config.json").read_text()))
    small = downscaled(load_config("qwen2_5_vl_7b").arch, vocab_size=arch.text.vocab_size)
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 1, "vision_start_token_id": 3,
           "vision_end_token_id": 4, "image_token_id": 5, "video_token_id": 6}
    for freeze in (True, False):
        for modules in (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), ("q_proj",)):
            phase = GRPOPhase(lora_rank=4, lora_target_modules=modules, freeze_vision=freeze)
            peft_model = get_peft_model(random_model(small, ids), peft_config(phase))
            trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
            assert sum(trainable.values()) == lora_params(small, phase) > 0
            assert all("lora_" in n for n in trainable)
            assert any(".visual.blocks." in n for n in trainable) is (not freeze)
            assert any(".merger." in n for n in trainable) and not any("lm_head" in n for n in trainable)
    assert peft_config(GRPOPhase()) is None  # rank 0: every parameter trains
    assert "visual" in target_pattern(GRPOPhase(lora_rank=8))


def _reasoner_rows(n: int = 4):
    from datasets import Dataset

    from visplay.roles.prompts import reasoner_messages
    from visplay.worlds.questions import make_question
    from visplay.worlds.scene import make_scene

    rows = []
    for i in range(n):
        scene = make_scene("unlabeled", i)
        q = make_question(scene, random.Random(i), families=("count",))
        rows.append({"prompt": reasoner_messages(q.text), "image": scene.render(), "label": str(q.answer)})
    return Dataset.from_list(rows)


def test_lora_reasoner_phase_changes_the_weights_and_saves_a_plain_merged_model(tmp_path):
    from transformers import AutoModelForImageTextToText

    from visplay.answers import Grader
    from visplay.models import load_model
    from visplay.rewards.registry import build_rewards
    from visplay.evolve.grpo import train_grpo

    model, processor = load_model(EMBEDDED_MODELS["tiny"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    phase = GRPOPhase(steps=2, prompts_per_step=2, num_generations=2, max_completion_length=16, lr=1e-2,
                      beta=0.04, lora_rank=8, temperature=2.0, rewards=("accuracy", "format"),
                      reward_weights=(0.9, 0.1))
    out = tmp_path / "reasoner"

    def length(completions, **kw):  # differs within a group, so every step has a non-zero advantage
        return [float(len(c[0]["content"])) for c in completions]

    with Grader(workers=0) as grader:
        rewards = build_rewards(phase.rewards, grader=grader) + [length]
        _, history, guard = train_grpo(model, processor, _reasoner_rows(), rewards,
                                       replace(phase, reward_weights=(0.9, 0.1, 1.0), rewards=None), out,
                                       role="reasoner")
    assert len([h for h in history if "loss" in h]) == 2 and guard is None
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "README.md" in files and "chat_template.jinja" in files
    assert not any(name.startswith("adapter_") for name in files)  # merged, not an adapter
    plain = AutoModelForImageTextToText.from_pretrained(out)
    assert type(plain).__name__ == "Qwen2_5_VLForConditionalGeneration"
    after = plain.state_dict()
    assert set(after) == set(before)  # no lora_A/lora_B or base_layer keys left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(re.search(r"(q|k|v|o|gate|up|down)_proj|merger", k) for k in changed), changed
    assert not any("visual.blocks" in k for k in changed)  # freeze_vision: the tower keeps its weights
    assert "lora rank 8" in (out / "README.md").read_text()
    reloaded, _ = load_model(out)  # what eval, serve and the next iteration call
    assert not any(n.startswith("base_model") for n, _ in reloaded.named_parameters())


def test_tiny_loop_with_a_lora_reasoner_runs_to_the_end(tmp_path, capsys):
    """`visplay evolve --set evolve.reasoner.lora_rank=8` on the shipped tiny model: every stage done,
    the reasoner checkpoint loads with plain `AutoModelForImageTextToText` and differs from the base."""
    import json

    from transformers import AutoModelForImageTextToText
    from test_evolve import SHORT, STAGES

    run = tmp_path / "run"
    argv = ["evolve", "--run", str(run), "--quiet"] + [a for o in SHORT + ["evolve.reasoner.lora_rank=8",
                                                                           "evolve.reasoner.lr=1e-2"]
                                                       for a in ("--set", o)]
    assert main(argv) == 0, capsys.readouterr().err
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(stages[s]["state"] == "done" for s in STAGES)
    assert stages["iter1/reasoner"]["train_rows"] > 0
    merged = AutoModelForImageTextToText.from_pretrained(run / "iter1/reasoner")
    base = AutoModelForImageTextToText.from_pretrained(EMBEDDED_MODELS["tiny"])
    assert merged.state_dict().keys() == base.state_dict().keys() and not list(run.glob("iter1/*.ckpt"))
    assert "lora rank 8" in (run / "iter1/reasoner/README.md").read_text()


def test_lora_phase_on_two_ranks_saves_the_merged_model(micro_model_dir, tmp_path):
    """The launched path (torchrun, 2 processes, gloo/DDP): rank 0 merges the adapters and saves a plain
    checkpoint with its record; the other rank writes nothing."""
    from test_shards import reasoner_run
    from transformers import AutoModelForImageTextToText

    from visplay.evolve.launch import launch_phase

    cfg, run = reasoner_run(tmp_path, micro_model_dir, "{python} -m torch.distributed.run --nproc_per_node 2",
                            ["evolve.reasoner.lora_rank=4"])
    history, guard = launch_phase(cfg, run, "iter1/reasoner")
    log = (run.root / "iter1/reasoner.worker.log").read_text()
    assert "iter1/reasoner: rank 0 of 2" in log and "iter1/reasoner: rank 1 of 2" in log
    assert [h["step"] for h in history if "loss" in h] == [1, 2] and guard is None
    out = run.root / "iter1/reasoner"
    assert not any(p.name.startswith("adapter_") for p in out.iterdir()) and (out / "train_result.json").is_file()
    merged = AutoModelForImageTextToText.from_pretrained(out)
    base = AutoModelForImageTextToText.from_pretrained(micro_model_dir)
    assert merged.state_dict().keys() == base.state_dict().keys()
    assert not (run.root / "iter1/reasoner.ckpt").exists() and not (run.root / "iter1/reasoner.tmp").exists()


@pytest.mark.faults
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_killed_in_the_middle_of_a_lora_phase_resumes_to_the_same_weights_and_rows(tmp_path):
    """SIGKILL once the LoRA reasoner phase wrote checkpoint-1 (an adapter), then `--resume`: the run
    ends with the reference's rows, GRPO steps logged once each, and the same merged weights."""
    import json

    import faults
    from faults import KillPoint
    from safetensors.torch import load_file

    overrides = faults.fast_overrides() + ["evolve.reasoner.lora_rank=8", "evolve.reasoner.lr=1e-2",
                                           "evolve.questioner.lora_rank=4", "evolve.ladder=false",
                                           "evolve.source_objects=[2,4]"]  # short traces: labels kept, reasoner trains
    reference = tmp_path / "reference"
    timeline = faults.reference_run(reference, overrides, tmp_path / "reference.log")
    run = tmp_path / "run"
    chain = faults.run_chain(run, reference, [KillPoint("iter1/reasoner", "checkpoint", 1)], overrides,
                             tmp_path / "run.log", timeline)
    log = chain.log.read_text()[-3000:]
    kill = chain.kills[0]
    assert kill.landed == "iter1/reasoner" and kill.exit_code == -signal.SIGKILL, log
    assert kill.problems == [] and kill.orphans == [] and chain.resumed_ok, (kill.problems, log)
    assert chain.comparison.ok, (chain.comparison, log)
    assert json.loads((run / "manifest.json").read_text())["stages"]["iter1/reasoner"]["train_rows"] > 0
    for role in ("questioner", "reasoner"):
        want = load_file(reference / f"iter1/{role}/model.safetensors")
        got = load_file(run / f"iter1/{role}/model.safetensors")
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), role
    for stage in ("iter1/eval",):  # answers, not only keys: the resumed reasoner answers like the reference
        import pyarrow.parquet as pq

        rows = [pq.read_table(Path(r) / stage / "items.parquet").to_pylist() for r in (reference, run)]
        assert rows[0] == rows[1]


# ---------------------------------------------------------------- LoRA for the SFT objective


def _chain_rows(n: int = 8):
    from visplay.evolve.rows import png_bytes
    from visplay.evolve.sft import chain_rows
    from visplay.worlds.scene import WorldConfig, make_scene

    scenes = [make_scene("unlabeled", i, WorldConfig(grid=5, min_objects=1, max_objects=3)) for i in range(n)]
    return chain_rows([{"kept": True, "question": "How many objects are there?", "image_id": f"s{i}", "sample": 0,
                        "image_png": png_bytes(s.render()), "chains": [[f"<think>{s.level}</think>\\boxed{{{s.level}}}"]]}
                       for i, s in enumerate(scenes)])


class _Killed(Exception):
    """Raised right after a mid-phase checkpoint: the phase stops there, as a killed process would."""


def test_lora_sft_saves_a_plain_merged_model_and_resumes_exactly(tmp_path, monkeypatch):
    """`evolve.sft_lora_rank`: `train_sft` on the shipped tiny model trains adapters, saves a merged plain
    checkpoint that `AutoModelForImageTextToText` loads (no adapter keys, only adapted layers changed),
    keeps only the adapter in its mid-phase checkpoints, and a phase stopped after one of them resumes
    to exactly the weights of the uninterrupted phase."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, Trainer

    from visplay.config import SFTPhase
    from visplay.evolve.sft import train_sft
    from visplay.models import load_model

    rows = _chain_rows()
    phase = SFTPhase(epochs=2, batch_size=2, lr=1e-2, lora_rank=4)  # 8 steps, a checkpoint every 2

    def sft(out):
        model, processor = load_model(EMBEDDED_MODELS["tiny"])
        return train_sft(model, processor, rows, out, epochs=phase.epochs, batch_size=phase.batch_size, lr=phase.lr,
                         seed=3, lora=phase)

    _, history = sft(tmp_path / "whole")
    assert [h["step"] for h in history if "train_loss" in h] == [8]
    files = {p.name for p in (tmp_path / "whole").iterdir()}
    assert "model.safetensors" in files and not any(f.startswith("adapter_") for f in files)
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "whole")
    base = AutoModelForImageTextToText.from_pretrained(EMBEDDED_MODELS["tiny"])
    before, after = base.state_dict(), merged.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(re.search(r"(q|k|v|o|gate|up|down)_proj|merger", k) for k in changed), changed
    assert not any("visual.blocks" in k for k in changed)

    real_save = Trainer._save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        if self.state.global_step == 4:
            raise _Killed

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Killed):
        sft(tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_save_checkpoint", real_save)
    ckpt = tmp_path / "resumed.ckpt" / "checkpoint-4"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()  # the adapter only
    assert not (tmp_path / "resumed").exists()
    _, resumed = sft(tmp_path / "resumed")
    assert [h["step"] for h in resumed if "train_loss" in h] == [8]
    want, got = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not (tmp_path / "resumed.ckpt").exists()
