"""Real-scale plumbing without GPUs, weights or vLLM: presets, shapes, the GRPO/vLLM arguments, the
dry-run plan, accelerate configs, bad input before anything is written, and the loop on real image
sources (a Vision-SR1 parquet with corrupt rows, a folder).

Parameter counts come from the real HF class built on the meta device and must match both the
layer formulas and the published sizes (Qwen2.5-VL-3B: 3.75B, 7B: 8.29B). Offline:
`pytest -q tests/test_scale.py` (about a minute; the parquet loop on the tiny model is the slow part).
"""

from __future__ import annotations

import dataclasses

import importlib.util
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visplay.tiny.build import tiny_arch
from visplay.arch import analytic_counts, arch_from_hf, downscaled, hf_config, image_tokens, param_counts
from faults import VISPLAY_LOOP
from visplay.cli import main
from visplay.config import EMBEDDED_MODELS, ConfigError, GRPOPhase, load_config
from visplay.evolve.plan import build_plan, memory_per_gpu
from visplay.evolve.grpo import VLLMUnavailable, check_vllm, grpo_args

PRESETS = ["qwen2_5_vl_3b", "qwen2_5_vl_7b", "mimo_vl_7b"]
PUBLISHED = {"qwen2_5_vl_3b": 3.75e9, "qwen2_5_vl_7b": 8.29e9}  # HF model cards


# --- presets and shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_carry_the_reference_recipe(preset):
    cfg = load_config(preset)
    ev = cfg.evolve
    assert cfg.dtype == "bfloat16" and cfg.arch is not None and cfg.model.count("/") == 1
    assert (ev.min_pixels, ev.max_pixels) == (512 * 512, 2048 * 2048) and ev.source.startswith("parquet:")
    steps = 40 if preset == "qwen2_5_vl_3b" else 20
    for ph in (ev.questioner, ev.reasoner):
        assert (ph.steps, ph.rollout_prompts, ph.prompts_per_step, ph.num_generations) == (steps, 512, 128, 8)
        assert (ph.lr, ph.beta, ph.temperature, ph.weight_decay) == (1e-6, 1e-2, 1.0, 1e-2)
        assert ph.gradient_checkpointing and not ph.freeze_vision and not ph.lora
        assert ph.use_vllm and ph.vllm_mode == "colocate" and ph.vllm_gpu_memory_utilization == 0.4  # the [vllm] extra
    assert (ev.questioner.max_completion_length, ev.reasoner.max_completion_length) == (2048, 4096)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_labels_stage_of_every_real_preset_fits_its_card(preset):
    """The reasoner's weights and one sampler batch's KV cache at full length fit the preset's GPU, under the
    README's SFT + LoRA command as under GRPO (the same in-process sampler labels both). With the default
    `sampler.batch_rows` 256 the 3B preset planned 91 GiB of 80, and the 7B ones more."""
    from visplay.evolve.plan import GIB

    cfg = load_config(preset, ["evolve.reasoner_objective=sft", "evolve.sft_lora_rank=8"])
    (reasoner,) = build_plan(cfg, preset)["members"]
    assert reasoner["kv_cache"] > 0 and reasoner["weights"] + reasoner["kv_cache"] <= cfg.hardware.gpu_memory_gib * GIB
    assert cfg.sampler.batch_rows < load_config("tiny").sampler.batch_rows


@pytest.mark.parametrize("preset", PRESETS)
def test_param_counts_meta_equal_formulas_and_published(preset):
    arch = load_config(preset).arch
    counts = param_counts(arch)
    assert counts == analytic_counts(arch)
    assert counts.vision == 631_975_680  # the same Qwen2.5-ViT in all three
    if preset in PUBLISHED:
        assert abs(counts.total - PUBLISHED[preset]) / PUBLISHED[preset] < 0.005
    assert image_tokens(2048 * 2048, arch.vision) == 5350


def test_arch_from_config_json_reproduces_the_tiny_model(micro):
    model, _ = micro
    cfg_json = json.loads((EMBEDDED_MODELS["tiny"] / "config.json").read_text())
    tiny = arch_from_hf(cfg_json)
    shipped = tiny_arch()  # the shipped model is built from the defaults (presets/tiny.yaml)
    assert tiny == dataclasses.replace(shipped, text=dataclasses.replace(shipped.text, vocab_size=tiny.text.vocab_size))
    micro_arch = arch_from_hf(model.config.to_dict())
    assert param_counts(micro_arch).total == sum(p.numel() for p in model.parameters())


def test_downscaled_arch_builds_a_runnable_model():
    import torch

    from visplay.arch import random_model

    small = downscaled(load_config("qwen2_5_vl_7b").arch, vocab_size=1000)
    assert small.text.num_hidden_layers == 2 and small.text.tie_word_embeddings is False
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 1, "vision_start_token_id": 3,
           "vision_end_token_id": 4, "image_token_id": 5, "video_token_id": 6}
    model = random_model(small, ids)
    out = model(input_ids=torch.tensor([[7, 8, 9]]))
    assert out.logits.shape == (1, 3, 1000)
    with pytest.raises(ValueError, match="do not fit"):
        hf_config(small)  # Qwen's ids need the full vocabulary


@pytest.mark.parametrize("overrides, match", [
    (["arch={text: {vocab_size: 10, hidden_size: 8}}"], r"arch.text: missing required key\(s\) \['intermediate_size'"),
    (["arch={text: {vocab_size: 9, hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, "
      "num_attention_heads: 2, num_key_value_heads: 1, mrope_section: [1, 2, 3]}}"], "mrope_section"),
    (["arch={text: {vocab_size: 9, hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, "
      "num_attention_heads: 2, num_key_value_heads: 1, mrope_section: [4, 6, 6], colour: red}}"], "unknown key.*colour"),
    (["evolve.questioner.prompts_per_rollout=6"], r"evolve.questioner: prompts_per_rollout \(6\) must be a multiple"),
    (["evolve.reasoner.vllm_mode=remote"], "evolve.reasoner: vllm_mode must be one of"),
    (["sampler.launch='vllm serve {model}'"], "are for sampler.backend openai or vllm"),
    (["sampler.url=http://127.0.0.1:8000/v1"], "are for sampler.backend openai or vllm"),
    (["sampler.backend=openai"], "backend openai needs sampler.url"),
    (["sampler.backend=sglang"], "sampler.backend must be one of"),
    (["sampler.backend=openai", "sampler.url=localhost:8000"], "sampler.url must be an http"),
    (["sampler.backend=vllm", "sampler.launch='vllm serve --port {port}'"], "needs a {model} placeholder"),
    (["evolve.max_pixels=10", "evolve.min_pixels=20"], "min_pixels"),
    (["dtype=float8"], "dtype must be one of"),
])
def test_bad_scale_config_names_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", overrides)


# --- GRPO arguments and vLLM ---------------------------------------------------------------------------


def test_grpo_args_map_the_reference_batch_onto_trl(tmp_path):
    q = dataclasses.replace(load_config("qwen2_5_vl_3b").evolve.questioner, use_vllm=True)  # in a vllm-built env
    kw = grpo_args(q, tmp_path, world_size=8, use_cpu=False, bf16=True, suppress_tokens=[5, 6])
    # 40 rollout batches of 512 prompts x 8, each feeding 512/128 = 4 updates; per GPU 2 completions x 64
    assert kw["max_steps"] == 160 and kw["generation_batch_size"] == 512 * 8
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (2, 64)
    # one update = prompts_per_step x num_generations completions, across the 8 GPUs
    assert kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"] * 8 == q.prompts_per_step * q.num_generations
    assert (kw["learning_rate"], kw["beta"], kw["weight_decay"], kw["top_p"], kw["bf16"]) == (1e-6, 1e-2, 1e-2, 0.99, True)
    assert kw["use_vllm"] and kw["vllm_mode"] == "colocate" and kw["vllm_max_model_length"] == 6144 + 2048
    assert kw["vllm_gpu_memory_utilization"] == 0.4 and "generation_kwargs" not in kw  # vLLM has no suppress_tokens
    assert kw["save_steps"] == 40  # every 10 rollout batches
    server = GRPOPhase(use_vllm=True, vllm_mode="server", vllm_server_url="http://10.0.0.2:8000")
    skw = grpo_args(server, tmp_path)
    assert skw["vllm_server_base_url"] == "http://10.0.0.2:8000" and "vllm_gpu_memory_utilization" not in skw
    plain = grpo_args(GRPOPhase(prompts_per_step=4, num_generations=4), tmp_path, suppress_tokens=[5])
    assert "use_vllm" not in plain and plain["generation_kwargs"] == {"suppress_tokens": [5]}
    assert (plain["per_device_train_batch_size"], plain["gradient_accumulation_steps"], plain["max_steps"]) == (16, 1, 10)
    with pytest.raises(ValueError, match="do not split over 3 processes"):
        grpo_args(q, tmp_path, world_size=3)
    with pytest.raises(ValueError, match="per_device_batch 3 must divide"):
        grpo_args(GRPOPhase(per_device_batch=3), tmp_path)


def test_trl_accepts_the_arguments(tmp_path):
    """GRPOConfig takes every key (vLLM ones included, vllm not installed) and derives the same schedule."""
    from trl import GRPOConfig

    q = dataclasses.replace(load_config("qwen2_5_vl_3b").evolve.questioner, use_vllm=True)
    args = GRPOConfig(**grpo_args(q, tmp_path, world_size=1, use_cpu=True))
    assert args.use_vllm and args.vllm_mode == "colocate" and args.beta == 0.01
    # one process: 1024 completions per update in micro-batches of 2; one generation feeds 4 updates
    assert args.gradient_accumulation_steps == 512 and args.steps_per_generation == 4 * 512


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_missing_is_a_clear_error():
    check_vllm(GRPOPhase(use_vllm=False))  # off: nothing to check
    with pytest.raises(VLLMUnavailable, match=r"evolve.reasoner.use_vllm is on but vLLM is not installed.*"
                                               r"pip install 'visplay\[vllm\]'.*--set evolve.reasoner.use_vllm=false"):
        check_vllm(GRPOPhase(use_vllm=True), "evolve.reasoner")


# --- the dry-run plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny"] + PRESETS)
def test_dry_run_prints_the_plan_without_loading(preset, capsys, monkeypatch, tmp_path):
    import sys

    import visplay.evolve.loop  # noqa: F401 -- every module that could load a model, imported first
    import visplay.models

    def no_loading(*a, **k):
        raise AssertionError("the dry run loaded a model")

    real = visplay.models.load_model
    for name, module in list(sys.modules.items()):  # the module and every module that imported the name
        if name.startswith("visplay") and getattr(module, "load_model", None) is real:
            monkeypatch.setattr(module, "load_model", no_loading)
    monkeypatch.chdir(tmp_path)
    assert main(["evolve", "--preset", preset, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing loaded, downloaded or written" in out and list(tmp_path.iterdir()) == []
    for part in ("iter<t>/questioner", "iter<t>/questions", "iter<t>/labels", "iter<t>/reasoner", "tokens per phase",
                 "memory per GPU"):
        assert part in out
    if preset == "tiny":
        assert "4.15M total" in out and "(found)" in out
    else:
        assert "NOT on disk here" in out and "(vLLM colocate)" in out and "transformers generate" not in out
        assert f"reasoner   0.4 x 80 GiB = 32.0 GiB: bf16 weights" in out and "full-length sequences" in out
        assert "+  32.0 =" in out and "reasoner rank 8 if set" in out
        assert "accelerate launch --config_file {repo}/configs/accelerate/" in out and "8 shard workers" in out
        assert f"{load_config(preset).evolve.questioner.steps} steps x 512 prompts x 8 samples" in out
    if preset == "qwen2_5_vl_3b":
        assert "3.75B total" in out and "163.84k rollouts" in out and "<= 5,478 prompt" in out
        assert "per GPU 2 completions x 64 accumulation" in out
    launched = {"tiny": "ddp", "qwen2_5_vl_3b": "zero2"}.get(preset, "zero3")  # the presets' accelerate configs
    marked = {line.split()[1] for line in out.splitlines() if line.endswith("<- the launcher's")}
    assert marked == {launched} and f"GRPO memory layout {launched} (from the launcher's config)" in out


def test_memory_layout_is_read_from_the_launchers_accelerate_config(tmp_path):
    """The plan sizes memory for what the launcher will run, never for a second, separate knob."""
    from visplay.evolve.plan import launcher_strategy

    acc = "accelerate launch --config_file {repo}/configs/accelerate/"
    assert [launcher_strategy(acc + f) for f in ("zero2.yaml", "zero3.yaml", "multi_node_zero3.yaml", "fsdp.yaml",
                                                  "multi_gpu.yaml", "single_gpu.yaml")] == \
        ["zero2", "zero3", "zero3", "fsdp", "ddp", "ddp"]
    assert launcher_strategy(acc + "zero2.yaml --num_processes 1 --offload_optimizer_device cpu") == "zero2_offload"
    assert launcher_strategy(None) == "ddp" and launcher_strategy("torchrun --nproc_per_node 8") == "ddp"
    with pytest.raises(ConfigError, match="cannot read its --config_file"):
        launcher_strategy(f"accelerate launch --config_file {tmp_path}/missing.yaml")


def test_plan_numbers(tmp_path):
    cfg = load_config("qwen2_5_vl_7b")
    plan = build_plan(cfg, "qwen2_5_vl_7b")
    q = plan["phases"][0]
    assert (q.rollouts, q.updates, q.micro_batch, q.accumulation) == (20 * 512 * 8, 80, 1, 128)
    p = plan["params"].total
    z3 = plan["memory"]["reasoner"]["zero3"]
    assert z3["total"] == pytest.approx((2 + 2 + 12 + 2) * p / 8)  # everything sharded over 8 GPUs
    z2 = memory_per_gpu(plan["params"], p, 8, "zero2", kl=True)
    assert z2["weights"] == 2 * p and z2["optimizer"] == pytest.approx(12 * p / 8) and z2["reference"] == 2 * p
    ddp = memory_per_gpu(plan["params"], p, 8, "ddp", kl=False)
    assert ddp["total"] == 16 * p and ddp["reference"] == 0
    # with LoRA: frozen base weights as the layout keeps them, gradients + optimizer for the adapters only,
    # no reference copy (TRL switches the adapters off); the layouts that shard the weights are not offered
    from visplay.evolve.lora import lora_params

    adapters = plan["lora"]["reasoner"]["params"]
    assert adapters == lora_params(cfg.arch, cfg.evolve.reasoner, 8) and plan["lora"]["reasoner"]["on"] is False
    lora = plan["memory_lora"]["reasoner"]
    assert set(lora) == {"ddp", "zero2", "zero2_offload"}
    assert lora["zero2"]["weights"] == 2 * p and lora["zero2"]["reference"] == 0
    assert lora["zero2"]["optimizer"] == pytest.approx(12 * adapters / 8) and lora["ddp"]["gradients"] == 4 * adapters
    # vLLM colocate: 0.4 of an 80 GiB card, its bf16 weights, the rest KV cache (28 layers x 4 KV heads x 128 x K,V x bf16)
    v = plan["vllm"]["reasoner"]
    assert v["bytes"] == 0.4 * 80 * 2**30 and v["weights"] == 2 * p
    assert v["kv_tokens"] == int((0.4 * 80 * 2**30 - 2 * p) // (2 * 28 * 4 * 128 * 2))
    assert v["sequences"] == v["kv_tokens"] // (12288 + 4096)
    off = build_plan(load_config("qwen2_5_vl_7b", ["evolve.reasoner.use_vllm=false"]))
    assert off["vllm"]["reasoner"] is None
    tp = build_plan(load_config("qwen2_5_vl_7b", ["evolve.reasoner.vllm_tensor_parallel_size=2"]))["vllm"]["reasoner"]
    assert tp["weights"] == p and tp["kv_tokens"] > 2 * v["kv_tokens"]
    sampled = load_config("tiny", ["sampler.backend=openai", "sampler.url=http://127.0.0.1:9/v1"])
    assert "OpenAI-compatible server http://127.0.0.1:9/v1 (already running)" in \
        __import__("visplay.evolve.plan", fromlist=["format_plan"]).format_plan(sampled, build_plan(sampled))


def test_committee_preset_plans_every_members_memory(capsys, monkeypatch, tmp_path):
    """presets/qwen2_5_vl_7b_committee.yaml without any weights here: the dry run sizes both members (the
    MiMo-VL member from the preset's committee_arch), their labels-stage weights + KV cache on each GPU,
    each member's SFT per GPU full and with LoRA (the launcher's zero2 marked), the SFT launcher line and
    the questioner's vLLM share; a url= member is served on GPUs of its own and never trains; a member
    with no shape anywhere is sized as the base model, and the plan says so."""
    from visplay.arch import param_counts
    from visplay.evolve.lora import lora_params
    from visplay.evolve.plan import format_plan, kv_bytes_per_token

    cfg = load_config("qwen2_5_vl_7b_committee")
    assert cfg.evolve.reasoner_objective == "sft" and cfg.evolve.coevolve and cfg.evolve.agreement == "answer"
    assert cfg.evolve.sft.lora and cfg.committee_arch[0] == load_config("mimo_vl_7b").arch
    plan = build_plan(cfg, "qwen2_5_vl_7b_committee")
    members = plan["members"]
    assert [m["member"] for m in members] == [0, 1] and all(m["trains"] for m in members)
    mimo = param_counts(load_config("mimo_vl_7b").arch)
    assert members[1]["params"] == mimo and members[1]["arch_source"] == "preset committee_arch[0]"
    assert members[0]["params"] == plan["params"]
    prompt = plan["prompt_tokens"]
    for m, arch in zip(members, (cfg.arch, cfg.committee_arch[0])):
        p = m["params"]
        assert m["weights"] == 2 * p.total  # bf16, every member loaded at once in the labels stage
        assert m["kv_cache"] == 16 * (prompt + 4096) * kv_bytes_per_token(arch)  # sampler.batch_rows 16
        # full SFT: fp32 weights of the whole model, grads + Adam for all but the frozen vision tower, no KL reference
        assert m["sft"]["ddp"]["total"] == 4 * p.total + 12 * p.trainable(True)
        adapters = lora_params(arch, cfg.evolve.sft, 64)
        assert m["sft_lora_params"] == adapters and set(m["sft_lora"]) == {"ddp", "zero2", "zero2_offload"}
        z2 = m["sft_lora"]["zero2"]
        assert z2["weights"] == 2 * p.total and z2["optimizer"] == pytest.approx(12 * adapters / 8)
    monkeypatch.chdir(tmp_path)
    assert main(["evolve", "--preset", "qwen2_5_vl_7b_committee", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert "-m visplay.evolve.worker sft RUN iter<t>/reasoner MEMBER   (each member, one after another, each on all 8" in out
    assert "labels stage per GPU: 2 member(s) at once = 60.1 GiB of 80: fits" in out
    assert "member 1  /models/MiMo-VL-7B-SFT: 8.30B params (shape: preset committee_arch[0])" in out
    assert "questioner 0.4 x 80 GiB = 32.0 GiB" in out  # the vLLM share of the questioner's colocated rollouts
    sft_rows = [line.split() for line in out.split("SFT per GPU")[1].splitlines()[2:] if line[:3].strip().isdigit()]
    assert {r[0] for r in sft_rows} == {"0", "1"} and len(sft_rows) == 2 * (5 + 3)
    marked = [r[:2] for r in sft_rows if r[-1] == "launcher's"]
    assert marked == [["0", "zero2"], ["1", "zero2"]] and all("fits" in r for r in sft_rows if r[1] == "zero2")
    served = load_config("qwen2_5_vl_7b_committee", ["evolve.committee=[url=http://10.0.0.9:8000/v1]",
                                                      "evolve.coevolve=false", "committee_arch=[]"])
    text = format_plan(served, build_plan(served))
    assert "served at http://10.0.0.9:8000/v1: needs GPUs of its own" in text and "never trains" in text
    assert [m["trains"] for m in build_plan(served)["members"]] == [True, False]
    guessed = build_plan(load_config("qwen2_5_vl_7b_committee", ["committee_arch=[]"]))["members"][1]
    assert guessed["arch_source"].startswith("assumed the base model's") and guessed["params"] == plan["params"]


# --- accelerate configs ------------------------------------------------------------------------------------


def test_accelerate_configs_are_valid_for_this_accelerate():
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    from visplay.config import REPO_ROOT

    dests = {a.dest for a in launch_command_parser()._actions}
    folder = REPO_ROOT / "configs/accelerate"
    expected = {"single_gpu": ("NO", 1, None), "multi_gpu": ("MULTI_GPU", 8, None), "zero2": ("DEEPSPEED", 8, 2),
                "zero3": ("DEEPSPEED", 8, 3), "fsdp": ("FSDP", 8, None), "multi_node_zero3": ("DEEPSPEED", 16, 3)}
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(expected)
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen

    for name, (kind, procs, stage) in expected.items():
        c = ClusterConfig.from_yaml_file(folder / f"{name}.yaml")  # unknown top-level keys raise
        assert (str(c.distributed_type).split(".")[-1], c.num_processes, c.mixed_precision) == (kind, procs, "bf16")
        assert set(c.deepspeed_config or {}) <= dests and set(c.fsdp_config or {}) <= dests
        if stage:
            assert c.deepspeed_config["zero_stage"] == stage
        for cls in (c.fsdp_config or {}).get("fsdp_transformer_layer_cls_to_wrap", "").split(","):
            assert not cls or hasattr(qwen, cls)
    assert ClusterConfig.from_yaml_file(folder / "multi_node_zero3.yaml").num_machines == 2


# --- bad input: one clear error, nothing written -------------------------------------------------------------


def _png(seed: int, size=(64, 48)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_input_fails_before_the_run_directory_exists(micro_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(_png(0))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    no_col = tmp_path / "nocol"
    no_col.mkdir()
    pq.write_table(pa.table({"picture": [_png(1)], "answer": ["1"]}), no_col / "train.parquet")
    cases = [
        (["--preset", "qwen2_5_vl_3b"], "model 'Qwen/Qwen2.5-VL-3B-Instruct' is neither a local model directory "
                                        "nor in the local HF cache"),
        (["--preset", "qwen2_5_vl_3b", "--model", str(micro_model_dir)], "parquet path /path/to/Vision-SR1-47K does not exist"),
        (["--preset", "qwen2_5_vl_3b", "--model", str(micro_model_dir), "--set", f"evolve.source=folder:{photos}",
          "--set", "evolve.questioner.use_vllm=true"], "evolve.questioner.use_vllm is on but vLLM is not installed"),
        (["--model", str(micro_model_dir), *[a for o in VISPLAY_LOOP for a in ("--set", o)],  # launchers: GRPO
          "--set", "hardware.launcher='no-such-launcher --gpus 8'"],
         "hardware.launcher runs 'no-such-launcher', which is not on PATH"),
        (["--model", str(micro_model_dir), "--set", "sampler.backend=vllm"] if shutil.which("vllm") is None else
         ["--model", str(micro_model_dir), "--set", "sampler.backend=vllm", "--set", "sampler.launch='no-vllm {model}'"],
         "sampler.launch runs "),
        (["--model", str(micro_model_dir), "--set", f"evolve.source=parquet:{no_col}", "--set", "evolve.agreement=answer"],
         "has no column 'images'"),
        (["--model", str(micro_model_dir), "--set", f"evolve.source=folder:{empty}", "--set", "evolve.agreement=answer"],
         "no images found in"),
        (["--model", str(tmp_path / "nope")], "does not exist"),
        (["--model", str(micro_model_dir), "--sampler-url", "http://127.0.0.1:9/v1", "--set", "sampler.retries=0"],
         "sampling server http://127.0.0.1:9/v1 unreachable"),
    ]
    if importlib.util.find_spec("vllm") is not None:
        cases.pop(2)
    for argv, message in cases:
        assert main(["evolve", "--run", str(run), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert not run.exists()
    assert "huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct" in \
        (main(["evolve", "--run", str(run), "--preset", "qwen2_5_vl_3b"]), capsys.readouterr().err)[1]


def test_open_images_applies_pixel_range_and_column(tmp_path):
    from visplay.evolve.context import open_images

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"image": pa.array([_png(2, (300, 200)), b"not an image", _png(3, (10, 10))])}), path)
    cfg = load_config("tiny", [f"evolve.source={path}", "evolve.image_column=image", "evolve.agreement=answer",
                               "evolve.min_pixels=1024", "evolve.max_pixels=4096"])
    src = open_images(cfg)
    items = list(src)
    assert len(items) == 2 and dict(src.skipped) == {"not_an_image": 1}
    assert all(1024 <= i.image.width * i.image.height <= 4096 for i in items)
    world = open_images(load_config("tiny"))
    assert next(iter(world)).id == "world/unlabeled/0"


# --- the loop on real image sources ------------------------------------------------------------------------------


def _world_pngs(n: int, start: int = 100) -> list[bytes]:
    """World scenes as PNG files: the tiny model can read them, but their ids are content hashes (no oracle)."""
    import io

    from visplay.worlds.scene import make_scene

    out = []
    for i in range(start, start + n):
        buf = io.BytesIO()
        make_scene("unlabeled", i).render().save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def test_short_loop_on_a_vision_sr1_parquet_with_corrupt_rows(tmp_path):
    """The full short loop (tiny model) on images from a Vision-SR1 parquet: corrupt rows skipped and counted."""
    from test_evolve import SHORT, STAGES

    from visplay.evolve.loop import run_evolve

    pngs = _world_pngs(16)
    cells = [[{"bytes": b, "path": None}] for b in pngs]
    cells[3] = [{"bytes": pngs[3][:50], "path": None}]  # truncated
    cells[7] = [{"bytes": b"<html>not an image</html>", "path": None}]
    cells[9] = []  # a row without an image
    schema = pa.schema([("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
                        ("problem", pa.string()), ("answer", pa.string())])
    data = tmp_path / "Vision-SR1-47K"
    data.mkdir()
    pq.write_table(pa.table({"images": cells, "problem": ["q"] * 16, "answer": ["a"] * 16}, schema=schema),
                   data / "train-00000-of-00001.parquet", row_group_size=5)
    cfg = load_config("tiny", SHORT + [f"evolve.source=parquet:{data}"])
    run = tmp_path / "run"
    run_evolve(cfg, run, say=print)
    m = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(m[s]["state"] == "done" for s in STAGES)
    assert m["iter1/questions"]["skipped_images"] == {"truncated": 1, "not_an_image": 1, "empty_row": 1}
    questions = pq.read_table(run / "iter1/questions.parquet").to_pylist()
    good = [b for i, b in enumerate(pngs) if i not in (3, 7, 9)][:12]
    from visplay.data.images import image_id

    assert [q["image_id"] for q in questions] == [image_id(b) for b in good]
    assert all(q["true_answer"] is None for q in questions)  # not world ids: no oracle, labels only by vote
    labels = pq.read_table(run / "iter1/labels.parquet").to_pylist()
    assert m["iter1/reasoner"]["train_rows"] == sum(r["kept"] for r in labels) > 0


def test_short_loop_on_an_image_folder(micro_model_dir, tmp_path):
    """The short loop (micro model) on a folder of images of several sizes, resized into the pixel range."""
    from test_evolve import SHORT, STAGES

    from visplay.evolve.loop import run_evolve

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, b in enumerate(_world_pngs(14)):
        (folder / ("sub" if i % 2 else ".") / f"{i:02d}.png").write_bytes(b)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    cfg = load_config("tiny", SHORT + [f"model={micro_model_dir}", f"evolve.source=folder:{folder}",
                                       "evolve.min_pixels=10000", "evolve.max_pixels=20000", "evolve.max_new_tokens=8",
                                       "evolve.questioner.max_completion_length=8", "eval.max_new_tokens=8"])
    run = tmp_path / "run"
    run_evolve(cfg, run, say=print)
    m = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(m[s]["state"] == "done" for s in STAGES)
    assert sum(m["iter1/questions"]["skipped_images"].values()) == 1
    questions = pq.read_table(run / "iter1/questions.parquet").to_pylist()
    assert len(questions) == 12 and len({q["image_id"] for q in questions}) == 12
    from visplay.evolve.rows import from_png

    assert all(10000 <= from_png(q["image_png"]).width * from_png(q["image_png"]).height <= 20000 for q in questions)
