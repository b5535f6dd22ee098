"""The GPU step benchmark runs end to end on CPU at `--scale tiny` (same code path as on a GPU).

Proves the benchmark builds the preset's structure (downscaled), runs one questioner and one reasoner
GRPO step through `visplay.evolve.grpo.build_trainer`, and reports positive step times, tokens, MFU and
peak memory for both phases. Offline, ~30 s: `pytest -q tests/test_bench_gpu_step.py`.
"""

from __future__ import annotations

import json
import sys

from visplay.config import REPO_ROOT


def test_bench_gpu_step_tiny_scale(tmp_path, capsys):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import bench_gpu_step
    finally:
        sys.path.pop(0)
    from visplay.arch import downscaled, param_counts
    from visplay.config import load_config

    out = tmp_path / "bench.json"
    res = bench_gpu_step.main(["--preset", "qwen2_5_vl_3b", "--scale", "tiny", "--steps", "1", "--prompts", "2",
                               "--generations", "2", "--completion", "4", "--pixels", "3136", "--reward-samples", "2",
                               "--out", str(out)])
    assert json.loads(out.read_text())["params"] == res["params"]
    from transformers import AutoTokenizer

    from visplay.config import EMBEDDED_MODELS

    vocab = len(AutoTokenizer.from_pretrained(EMBEDDED_MODELS["tiny"]))
    assert res["params"] == param_counts(downscaled(load_config("qwen2_5_vl_3b").arch, vocab_size=vocab)).total
    assert [p["phase"] for p in res["phases"]] == ["questioner", "reasoner"]
    for p in res["phases"]:
        assert p["steps"] == 1 and p["step_seconds"] > 0 and p["tokens_per_step"] > 0
        assert 0 < p["mfu"] < 1 and p["peak_memory_gib"] > 0
    text = capsys.readouterr().out
    assert "questioner" in text and "MFU" in text and "cpu" in text
    print(text)
