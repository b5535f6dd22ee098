"""What every config section shares: the error type, the repository root, the sampling knobs as a
section (`Sampling`), one way to declare a check (`require`) and the URL check of the two API bases.

The sections themselves live beside the code that reads them (`visplay.eval.world.EvalConfig`,
`visplay.evolve.sections.GRPOPhase`, `visplay.sampling.factory.SamplerConfig`, ...); `visplay.config`
assembles them into one tree and loads it. This module imports no section, so each can import it.
Test: `pytest tests/test_config.py tests/test_untrusted_inputs.py`.
"""

from __future__ import annotations

import typing
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visplay.sampling.base import Knobs, SamplingParams
from visplay.sampling.openai import display_url

REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    pass


def require(prefix: str, *checks: tuple[str, object, bool, str]) -> None:
    """A ConfigError for the first failed check ``(key, value, ok, need)``: "``{prefix}{key}`` must be
    ``{need}``, got ``{value}``". NaN fails every comparison, so it is refused too.

    >>> require("evolve.", ("chunk_size", 0, 0 >= 1, ">= 1"))
    Traceback (most recent call last):
    ...
    visplay.settings.ConfigError: evolve.chunk_size must be >= 1, got 0
    """
    for key, value, ok, need in checks:
        if not ok:
            raise ConfigError(f"{prefix}{key} must be {need}, got {value}")


@dataclass
class Sampling(Knobs):
    """The sampling knobs (`visplay.sampling.base.Knobs`: temperature, top_k, top_p,
    max_new_tokens, seed) as a config section's keys; the sections that generate outside GRPO
    (eval, bench, evolve) are this, so the names and the checks are the same everywhere."""

    SECTION: typing.ClassVar[str] = "sampling"  # the section's name in the config tree, for errors
    top_k: int = 40
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        try:
            self.check_knobs(f"{self.SECTION}.")
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def params(self, n: int = 1, **changes: Any) -> SamplingParams:
        """These knobs as one generate call's parameters (``changes`` e.g. temperature=0 for greedy)."""
        return SamplingParams(n=n, **{**self.knobs(), **changes})


def base_url(key: str, url: str) -> urllib.parse.SplitResult:
    """``url`` split, if it is an http(s) API base; else a ConfigError naming ``key`` (credentials
    in the URL are never echoed)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} must be an http(s) base URL like http://127.0.0.1:8000/v1, got {display_url(url)!r}")
    return parts
