"""Questioner reward: hardest at 50 % reasoner agreement, minus a diversity penalty; -1 if malformed.

For each generated question (one batched call for the whole GRPO batch):
  valid    = the output parses as <type>…</type><question>…</question><answer>…</answer>
  c        = share of the majority answer among m answers the *frozen* reasoner samples for the
             image + question (answers grouped by `visplay.answers` equivalence; unanswered
             samples count in m, so a question the reasoner cannot answer has low c)
  reward   = min(c, 1 - c) - cluster share of the question in the batch   (valid)
           = -1                                                           (invalid)
`QuestionerReward` is the callable TRL calls (``f(prompts, completions, image=..., **columns)``);
it logs the parts (``questioner/valid``, ``uncertainty``, ``agreement``, ``diversity_penalty``).
Test: `pytest tests/test_rewards.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from visplay.answers import Grader, vote
from visplay.rewards.diversity import cluster_shares
from visplay.rewards.text import completion_text
from visplay.roles.parsing import parse_questioner
from visplay.roles.prompts import reasoner_messages
from visplay.sampling.base import Prompt, Sampler, SamplingParams

INVALID_REWARD = -1.0


@dataclass
class QuestionerScores:
    reward: list[float]
    valid: list[bool]
    uncertainty: list[float]  # min(c, 1 - c); 0 for invalid questions
    agreement: list[float]  # c; 0 for invalid questions
    diversity_penalty: list[float]
    questions: list[str]
    reasons: Counter = field(default_factory=Counter)

    def means(self) -> dict[str, float]:
        n = max(1, len(self.reward))
        ok = [i for i, v in enumerate(self.valid) if v] or [None]
        pick = lambda xs: sum(xs[i] for i in ok if i is not None) / max(1, len([i for i in ok if i is not None]))  # noqa: E731
        return {
            "reward": sum(self.reward) / n,
            "valid": sum(self.valid) / n,
            "uncertainty": pick(self.uncertainty),
            "agreement": pick(self.agreement),
            "diversity_penalty": sum(self.diversity_penalty) / n,
        }


def questioner_reward(
    completions: Sequence[str],
    images: Sequence[Image.Image],
    reasoner: Sampler,
    m: int = 10,
    temperature: float = 1.0,
    top_k: int = 40,
    max_new_tokens: int = 64,
    seed: int = 0,
    grader: Grader | None = None,
    top_p: float = 1.0,
    threshold: float = 0.5,
) -> QuestionerScores:
    parsed = [parse_questioner(c) for c in completions]
    questions = [p.question if p.valid else "" for p in parsed]
    penalty = cluster_shares(questions, threshold).tolist() if questions else []
    valid_idx = [i for i, p in enumerate(parsed) if p.valid]
    agreements = [0.0] * len(parsed)
    if valid_idx:
        prompts = [Prompt(reasoner_messages(questions[i]), (images[i],)) for i in valid_idx]
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                                seed=seed)
        for i, ballot in zip(valid_idx, vote(reasoner, prompts, m, params, grader)):
            agreements[i] = ballot.agreement
    uncertainty = [min(c, 1 - c) if p.valid else 0.0 for c, p in zip(agreements, parsed)]
    reward = [u - d if p.valid else INVALID_REWARD for u, d, p in zip(uncertainty, penalty, parsed)]
    return QuestionerScores(
        reward, [p.valid for p in parsed], uncertainty, agreements, penalty, questions, Counter(p.reason for p in parsed)
    )


class QuestionerReward:
    """The questioner's TRL reward over a frozen reasoner; each call samples with its own seed."""

    __name__ = "questioner"

    def __init__(self, reasoner: Sampler, grader: Grader | None = None, m: int = 10, temperature: float = 1.0,
                 top_k: int = 40, max_new_tokens: int = 64, threshold: float = 0.5, seed: int = 0, top_p: float = 1.0):
        self.reasoner, self.grader = reasoner, grader
        self.kw = dict(m=m, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                       threshold=threshold)
        self.seed = seed
        self.calls = 0

    def __call__(self, prompts, completions, image, log_metric=None, **_) -> list[float]:
        self.calls += 1
        scores = questioner_reward([completion_text(c) for c in completions], image, self.reasoner, grader=self.grader,
                                   seed=self.seed + self.calls, **self.kw)
        if log_metric is not None:
            for k, v in scores.means().items():
                if k != "reward":
                    log_metric(f"questioner/{k}", v)
        return scores.reward
