"""The `Sampler` interface: batched, n samples per prompt, seeded. Every role and stage samples
through it, so the transformers (CPU/GPU) and OpenAI-compatible/vLLM backends are swappable.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class Prompt:
    """One chat prompt with the images its ``{"type": "image"}`` slots refer to, in order."""

    messages: list[dict]
    images: tuple[Image.Image, ...] = ()


@dataclass
class Knobs:
    """The sampling knobs, named and checked once: `SamplingParams` (one generate call) and the
    config sections that sample (`visplay.settings.Sampling`: eval, bench, evolve) are made of them."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0

    def check_knobs(self, prefix: str = "") -> None:
        """ValueError naming the first bad knob (``prefix``: its section, e.g. ``eval.``)."""
        for key, value, ok, need in (("temperature", self.temperature, self.temperature >= 0, ">= 0 (0 = greedy)"),
                                     ("top_k", self.top_k, self.top_k >= 0, ">= 0 (0 = off)"),
                                     ("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
                                     ("max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 1, ">= 1"),
                                     ("seed", self.seed, 0 <= self.seed < 2**31, "in [0, 2**31)")):
            if not ok:  # NaN fails every comparison, so it is refused too
                raise ValueError(f"{prefix}{key} must be {need}, got {value}")

    def knobs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Knobs)}


@dataclass
class SamplingParams(Knobs):
    """One generate call: ``n`` completions per prompt with these knobs."""

    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        self.check_knobs()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[str]]:
        """``params.n`` completions for each prompt, in prompt order."""
        ...
