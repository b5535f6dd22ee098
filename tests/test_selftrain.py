"""Self-training probe: majority chains are chosen without labels; fine-tuning really updates the model.

Offline, micro model and a scripted sampler; `pytest tests/test_selftrain.py`.
"""

from __future__ import annotations

import pytest
import torch

from visplay.config import ConfigError, EvalConfig, SelfTrainConfig
from visplay.evolve.self_train import finetune, majority_chains
from visplay.eval.world import eval_items
from visplay.roles.prompts import reasoner_messages
from visplay.worlds.questions import FAMILIES
from visplay.worlds.scene import WorldConfig
from visplay.worlds.trace import target

WORLD = WorldConfig(min_objects=1, max_objects=4)
SETTINGS = EvalConfig(families=tuple(FAMILIES))


class Scripted:
    """Answers question i with ``answers(i)`` (a list of boxed answers), one completion each."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, params):
        return [[f"<think>t{j}</think>\\boxed{{{a}}}" if a else "garbage" for j, a in enumerate(self.answers(i))]
                for i in range(len(prompts))]


def test_majority_chains_keep_only_agreeing_questions_and_chains():
    probe = SelfTrainConfig(n=6, k=4, min_agreement=0.5)
    truths = [q.answer for _, q in eval_items("unlabeled", 6, WORLD, tuple(FAMILIES), 0)]
    # even questions: 3 of 4 say the truth; odd: 4 different answers (agreement 0.25 -> dropped)
    rows, stats = majority_chains(Scripted(lambda i: [truths[i]] * 3 + ["zz"] if i % 2 == 0 else ["w", "x", "y", "zz"]),
                                  WORLD, probe, SETTINGS)
    assert stats == {"questions": 6, "kept": 3, "label_accuracy": 1.0}
    for row, i in zip(rows, (0, 2, 4)):
        assert row["target"].endswith(f"\\boxed{{{truths[i]}}}")  # a chain that reaches the majority
        assert row["image"].size == (140, 140)


def test_majority_chains_count_wrong_labels_and_skip_unformatted():
    probe = SelfTrainConfig(n=4, k=4, min_agreement=0.75)
    rows, stats = majority_chains(Scripted(lambda i: ["999"] * 3 + [None]), WORLD, probe, SETTINGS)
    assert stats["kept"] == 4 and stats["label_accuracy"] == 0.0  # a confident wrong label is counted as wrong
    rows, stats = majority_chains(Scripted(lambda i: [None] * 4), WORLD, probe, SETTINGS)
    assert rows == [] and stats["kept"] == 0


def test_finetune_changes_weights_and_saves_a_loadable_model(micro_model_dir, tmp_path):
    from visplay.models import load_model

    model, processor = load_model(micro_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lm_head" in n or "embed" in n}
    items = eval_items("unlabeled", 4, WORLD, tuple(FAMILIES), 0)
    rows = [{"messages": reasoner_messages(q.text),
             "target": target(q), "image": s.render()} for s, q in items]
    finetune(model, processor, rows, SelfTrainConfig(epochs=1, batch_size=2, lr=1e-2), tmp_path)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed
    reloaded, _ = load_model(tmp_path / "model")
    assert all(torch.equal(dict(reloaded.named_parameters())[n], p) for n, p in model.named_parameters())


def test_probe_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="min_agreement"):
        SelfTrainConfig(min_agreement=0)
    with pytest.raises(ConfigError, match=">= 1"):
        SelfTrainConfig(k=0)
