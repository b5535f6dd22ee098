"""The `Sampler` interface: batched, n samples per prompt, seeded. Every role and stage samples
through it, so the transformers (CPU/GPU) and OpenAI-compatible/vLLM backends are swappable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class Prompt:
    """One chat prompt with the images its ``{"type": "image"}`` slots refer to, in order."""

    messages: list[dict]
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={self.top_k}, top_p={self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[str]]:
        """``params.n`` completions for each prompt, in prompt order."""
        ...
