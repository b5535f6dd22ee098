"""Rewards on hand-built cases: questioner min(c, 1-c) - cluster share, -1 if malformed; reasoner 0.9/0.1."""

from __future__ import annotations

import pytest
from PIL import Image

from visplay.answers import Grader
from visplay.rewards.diversity import cluster_shares
from visplay.rewards.questioner import questioner_reward
from visplay.rewards.reasoner import reasoner_reward, reasoner_reward_parts
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


def test_reasoner_reward():
    comps = [box("1/2"), "\\boxed{0.5}", box("3"), "<think>a</think>", box("\\frac{1}{2}")]
    labels = ["0.5", "0.5", "0.5", "0.5", "1/2"]
    acc, fmt = reasoner_reward_parts(comps, labels)
    assert acc == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert fmt == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert reasoner_reward(comps, labels) == pytest.approx([1.0, 0.9, 0.1, 0.0, 1.0])
    assert reasoner_reward([box("B")], ["(B)"]) == [1.0]


def test_health_guard_fires_on_kl_or_entropy_and_remembers_why():
    from visplay.train import HealthGuard

    g = HealthGuard(max_kl=10, min_entropy=0.05)
    assert g.check({"kl": 0.5, "entropy": 0.3}, 1) is None
    assert g.check({"kl": 446.9, "entropy": 0.3}, 7) == "kl 447 > 10 at step 7"
    assert g.check({"kl": 0.1, "entropy": 0.01}, 8) == "kl 447 > 10 at step 7"  # first reason kept
    g2 = HealthGuard(max_kl=10, min_entropy=0.05)
    assert g2.check({"entropy": 0.01}, 3) == "entropy 0.01 < 0.05 at step 3"
