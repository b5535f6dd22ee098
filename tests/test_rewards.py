"""Rewards on hand-built cases, called exactly as training calls them (the registry, then TRL's
keyword arguments): questioner min(c, 1-c) - cluster share, -1 if malformed; reasoner accuracy and
format, weighted 0.9/0.1 by the config. Test: `pytest tests/test_rewards.py`."""

from __future__ import annotations

import pytest
from PIL import Image

from visplay.answers import Grader
from visplay.config import GRPOPhase
from visplay.rewards.diversity import cluster_shares
from visplay.rewards.questioner import questioner_reward
from visplay.rewards.registry import build_rewards, resolve_reward
from visplay.roles.prompts import questioner_target


class ScriptedSampler:
    """Answers each question with a fixed list of completions (keyed by question text)."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params.n))
        out = []
        for p in prompts:
            q = p.messages[0]["content"][0]["text"].split(" Reason in")[0]
            out.append(self.script[q][: params.n])
        return out


def _img():
    return Image.new("RGB", (28, 28))


def box(a):
    return f"<think>x</think>\\boxed{{{a}}}"


def test_questioner_reward_by_hand():
    q1, q2 = "How many red objects are there?", "What fraction of the objects are blue?"
    sampler = ScriptedSampler({
        q1: [box(3)] * 5 + [box(2)] * 5,  # c = 0.5 -> uncertainty 0.5
        q2: [box("0.5")] * 8 + [box("1/2")] + ["no answer"],  # "1/2" == "0.5": c = 0.9 -> 0.1
    })
    completions = [
        questioner_target("numerical", q1, "3"),
        questioner_target("regression", q2, "0.5"),
        "garbage",
        questioner_target("numerical", q1, "2"),  # duplicate of the first question
    ]
    with Grader(workers=0) as g:
        s = questioner_reward(completions, [_img()] * 4, sampler, m=10, grader=g)
    shares = cluster_shares([q1, q2, "", q1])
    assert shares.tolist() == [0.5, 0.25, 0.25, 0.5]
    assert s.valid == [True, True, False, True]
    assert s.agreement == pytest.approx([0.5, 0.9, 0.0, 0.5])
    assert s.uncertainty == pytest.approx([0.5, 0.1, 0.0, 0.5])
    assert s.reward == pytest.approx([0.5 - 0.5, 0.1 - 0.25, -1.0, 0.5 - 0.5])
    assert s.reasons["ok"] == 3 and s.reasons["tags missing or out of order: no <type> at the start"] == 1
    assert sampler.calls == [(3, 10)]  # one batched call, invalid questions not sampled
    means = s.means()
    assert means["valid"] == 0.75 and means["uncertainty"] == pytest.approx((0.5 + 0.1 + 0.5) / 3)


def test_questioner_reward_all_invalid_makes_no_sampler_call():
    sampler = ScriptedSampler({})
    s = questioner_reward(["x", "y"], [_img()] * 2, sampler, m=4)
    assert s.reward == [-1.0, -1.0] and sampler.calls == []


def _trl_rewards(fns, weights, completions, **columns) -> list[float]:
    """What TRL's GRPOTrainer computes: each function's rewards, summed with ``reward_weights`` (float32)."""
    import torch

    logged: dict[str, float] = {}
    per_func = torch.tensor([fn(prompts=[None] * len(completions), completions=completions, log_metric=logged.__setitem__,
                                **columns) for fn in fns], dtype=torch.float32).T
    return (per_func * torch.tensor(weights, dtype=torch.float32)).nansum(dim=1).tolist(), logged


def test_reasoner_rewards_as_training_builds_and_weights_them():
    from visplay.config import EvolveConfig

    phase = EvolveConfig().reasoner
    assert phase.rewards == ("accuracy", "format") and phase.reward_weights == (0.9, 0.1)
    comps = [box("1/2"), "\\boxed{0.5}", box("3"), "<think>a</think>", box("\\frac{1}{2}")]
    labels = ["0.5", "0.5", "0.5", "0.5", "1/2"]
    with Grader(workers=0) as g:
        fns = build_rewards(phase.rewards, grader=g, reasoner=None, m=3)
        total, logged = _trl_rewards(fns, phase.reward_weights, comps, label=labels, image=[None] * 5)
        assert [f(None, comps, label=labels) for f in fns] == [[1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 1.0]]
        assert total == pytest.approx([1.0, 0.9, 0.1, 0.0, 1.0])
        assert logged == {"reasoner/accuracy": 0.6, "reasoner/format": 0.6}
        assert _trl_rewards(fns, phase.reward_weights, [box("B")], label=["(B)"])[0] == [1.0]
    other = EvolveConfig(reasoner=GRPOPhase(reward_weights=(0.5, 0.5))).reasoner
    assert other.rewards == ("accuracy", "format") and other.reward_weights == (0.5, 0.5)


class KnobRecorder:
    """A frozen reasoner that answers every question with one boxed "1" and keeps the params it was asked with."""

    def __init__(self):
        self.params = []

    def generate(self, prompts, params):
        self.params.append(params)
        return [[box(1)] * params.n for _ in prompts]


def test_questioner_reward_samples_the_frozen_reasoner_with_every_evolve_knob(tmp_path):
    """evolve.top_p (with temperature, top_k, max_new_tokens) reaches the frozen reasoner's samples
    inside the questioner's reward, as the loop builds it."""
    from pathlib import Path

    from visplay.config import load_config
    from visplay.evolve.context import Context
    from visplay.evolve.grpo import reward_fns
    from visplay.run.rundir import RunDir

    cfg = load_config("tiny", ["evolve.top_p=0.7", "evolve.top_k=5", "evolve.temperature=0.9",
                               "evolve.max_new_tokens=33", "evolve.reward_samples=3"])
    frozen = KnobRecorder()
    with Grader(workers=0) as g:
        (reward,) = reward_fns(Context(cfg, RunDir(tmp_path), Path("models/tiny"), 2, g), "questioner", frozen)
        reward(prompts=[None], completions=[questioner_target("numerical", "How many red objects are there?", "1")],
               image=[_img()])
    (p,) = frozen.params
    assert (p.top_p, p.top_k, p.temperature, p.max_new_tokens, p.n) == (0.7, 5, 0.9, 33, 3)
    assert p.seed == cfg.evolve.seed + 2 + 1  # the iteration's seed, then one more per reward call


def test_reward_registry_takes_import_paths_and_refuses_unknown_names():
    assert resolve_reward("accuracy") is resolve_reward("visplay.rewards.reasoner:accuracy_reward")
    assert resolve_reward("visplay.rewards.reasoner.format_reward")(None, [box(1)]) == [1.0]
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        resolve_reward("nope")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_reward("visplay.rewards.reasoner:missing")
    from visplay.config import ConfigError, EvolveConfig

    with pytest.raises(ConfigError, match="one weight per reward"):
        EvolveConfig(reasoner=GRPOPhase(reward_weights=(1.0,)))
    assert EvolveConfig(questioner=GRPOPhase(rewards=("questioner", "format"))).questioner.reward_weights == (1.0, 1.0)


def test_health_guard_fires_on_kl_or_entropy_and_remembers_why():
    from visplay.evolve.grpo import HealthGuard

    g = HealthGuard(max_kl=10, min_entropy=0.05)
    assert g.check({"kl": 0.5, "entropy": 0.3}, 1) is None
    assert g.check({"kl": 446.9, "entropy": 0.3}, 7) == "kl 447 > 10 at step 7"
    assert g.check({"kl": 0.1, "entropy": 0.01}, 8) == "kl 447 > 10 at step 7"  # first reason kept
    g2 = HealthGuard(max_kl=10, min_entropy=0.05)
    assert g2.check({"entropy": 0.3}, 1) is None
    assert g2.check({"entropy": 0.01}, 3) == "entropy 0.01 < 0.05 (from 0.3 at the phase's start) at step 3"
    confident = HealthGuard(max_kl=10, min_entropy=0.02)  # starts below the floor: a fall is a collapse, a level is not
    assert confident.check({"entropy": 0.017}, 1) is None and confident.check({"entropy": 0.012}, 2) is None
    assert confident.check({"entropy": 0.008}, 3) == "entropy 0.008 < 0.02 (from 0.017 at the phase's start) at step 3"


def test_doctests():
    import doctest

    import visplay.rewards.reasoner
    import visplay.rewards.registry
    import visplay.rewards.text

    for module in (visplay.rewards.reasoner, visplay.rewards.registry, visplay.rewards.text):
        assert doctest.testmod(module).failed == 0
