"""Shared fixtures: a micro Qwen2.5-VL built offline in a temp dir (seconds, no network)."""

from __future__ import annotations

import pytest

from visplay.tiny.build import TinyModelConfig, build

MICRO = TinyModelConfig(
    vocab_size=400, hidden_size=64, layers=1, heads=1, kv_heads=1, intermediate_size=128,
    vision_hidden=32, vision_depth=1, vision_heads=2, vision_intermediate=64,
)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("micro") / "model", MICRO, seed=0)


@pytest.fixture(scope="session")
def micro(micro_model_dir):
    from visplay.models import load_model

    return load_model(micro_model_dir)
