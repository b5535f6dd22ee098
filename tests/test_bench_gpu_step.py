"""The GPU check (`make bench-gpu`, benchmarks/bench_gpu_step.py) kept working without a GPU.

Proves: at `--scale tiny` on CPU the benchmark builds the preset's structure (downscaled), runs one
questioner and one reasoner GRPO step through `visplay.evolve.grpo.build_trainer` (rollouts by transformers
generate: no vllm here) and one member-SFT step, full and with LoRA, through `visplay.evolve.sft.sft_trainer`
(LoRA trains fewer parameters, and its adapters come out again), and reports, per phase and as the JSON on its last line, the rollout
tokens/s, the update and step MFU against the bf16 peak, and the peak memory, with the EasyR1
anchors beside them; the MFU arithmetic is 6·N·tokens/s over the peak; at full scale without a GPU
it stops with one line saying so. Offline, ~30 s: `pytest -q tests/test_bench_gpu_step.py`.
"""

from __future__ import annotations

import doctest
import json
import sys

import pytest
import torch

from visplay.config import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import bench_gpu_step
    finally:
        sys.path.pop(0)
    return bench_gpu_step


def test_bench_gpu_step_tiny_scale(bench, tmp_path, capsys):
    from transformers import AutoTokenizer

    from visplay.arch import downscaled, param_counts
    from visplay.config import EMBEDDED_MODELS, load_config

    out = tmp_path / "bench.json"
    res = bench.main(["--preset", "qwen2_5_vl_3b", "--scale", "tiny", "--steps", "1", "--prompts", "2",
                      "--generations", "2", "--completion", "4", "--pixels", "3136", "--reward-samples", "2",
                      "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["params"] == res["params"] and saved["anchors"] == bench.ANCHORS
    vocab = len(AutoTokenizer.from_pretrained(EMBEDDED_MODELS["tiny"]))
    assert res["params"] == param_counts(downscaled(load_config("qwen2_5_vl_3b").arch, vocab_size=vocab)).total
    assert res["rollouts"] == "transformers generate" and res["versions"]["transformers"]
    assert [p["phase"] for p in res["phases"]] == ["questioner", "reasoner", "sft", "sft_lora"]
    for p in res["phases"][2:]:  # the member SFT: all update, no rollouts; tokens = 2 rows of image + chain
        assert p["steps"] == 1 and p["step_seconds"] > 0 and p["rollout_tokens"] is None
        assert p["tokens_per_step"] > 2 * 4 and p["tokens_per_s"] == pytest.approx(p["tokens_per_step"] / p["step_seconds"])
        assert 0 < p["mfu"] == p["update_mfu"] < 1 and p["peak_memory_gib"] > 0
    assert [p["lora_rank"] for p in res["phases"][2:]] == [0, 64]
    assert res["phases"][2]["tokens_per_step"] == res["phases"][3]["tokens_per_step"]
    for p in res["phases"][:2]:
        assert p["steps"] == 1 and p["step_seconds"] > 0 and p["tokens_per_step"] > 0
        assert 0 < p["mfu"] < 1 and p["peak_memory_gib"] > 0
        # generation was timed and counted: 2 prompts x 2 samples of <= 4 tokens
        assert 0 < p["rollout_tokens"] <= 2 * 2 * 4 and p["rollout_tokens_per_s"] > 0
        assert 0 < p["rollout_seconds"] < p["step_seconds"]
        assert 0 < p["update_seconds"] < p["step_seconds"] and p["mfu"] < p["update_mfu"] < 1
    text = capsys.readouterr().out
    assert "rollout tok/s" in text and "update MFU" in text and "cpu" in text and "1,200 rollout tokens/s" in text
    assert json.loads(text.strip().splitlines()[-1])["phases"][3]["phase"] == "sft_lora"  # the JSON, last line
    assert "\nsft_lora " in text


def test_mfu_arithmetic(bench):
    assert doctest.testmod(bench).failed == 0
    # EasyR1's anchor reads the same way: 6.3 % of 8 x 989 TFLOPS on 3.75B parameters
    tokens_per_s = 0.063 * 8 * 989e12 / (6 * 3.75e9)
    assert bench.mfu(3_750_000_000, tokens_per_s, 1.0, 8, 989.0) == pytest.approx(0.063)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_no_gpu_is_one_clear_line_before_anything_is_built(bench, tmp_path):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as e:
        bench.main(["--preset", "qwen2_5_vl_3b", "--out", str(out)])
    assert str(e.value) == bench.NO_GPU and "no CUDA GPU is visible" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()
    with pytest.raises(SystemExit, match="--rollouts vllm needs vllm and a GPU"):
        bench.main(["--preset", "qwen2_5_vl_3b", "--scale", "tiny", "--rollouts", "vllm"])
