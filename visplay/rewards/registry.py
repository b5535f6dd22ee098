"""Rewards by name: ``evolve.<role>.rewards`` lists names from `REWARDS` or import paths.

A name is one entry of `REWARDS`; anything else must be ``pkg.module:fn`` (or ``pkg.module.fn``),
a function TRL can call, ``f(prompts, completions, **columns) -> list[float | None]`` (dataset
columns such as ``label`` or ``image`` arrive as keyword arguments), as in TRL's
``trl/scripts/grpo.py``. `build_rewards` passes each one the loop's shared objects it asks for by
keyword (``grader``, the frozen ``reasoner`` sampler, the questioner settings), so a new reward is
one function, plus one entry here to give it a short name.

>>> [getattr(f, "func", f).__name__ for f in build_rewards(["accuracy", "format"], grader=None)]
['accuracy_reward', 'format_reward']

Test: `pytest tests/test_rewards.py`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Sequence

from visplay.rewards.questioner import QuestionerReward
from visplay.rewards.reasoner import accuracy_reward, format_reward

REWARDS: dict[str, Callable] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "questioner": QuestionerReward,
}


def resolve_reward(name: str) -> Callable:
    """The reward function (or class) called ``name``: a `REWARDS` key or an import path."""
    if name in REWARDS:
        return REWARDS[name]
    module, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module or not attr:
        raise ValueError(f"unknown reward {name!r}: use one of {sorted(REWARDS)} or an import path pkg.module:fn")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {name!r} cannot be imported: {e}") from e
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not callable")
    return fn


def build_rewards(names: Sequence[str], **shared) -> list[Callable]:
    """The TRL reward callables of ``names``, each given the ``shared`` objects it takes by keyword."""
    out = []
    for name in names:
        fn = resolve_reward(name)
        params = inspect.signature(fn).parameters
        bound = {k: v for k, v in shared.items() if k in params}
        out.append(fn(**bound) if inspect.isclass(fn) else functools.partial(fn, **bound) if bound else fn)
    return out
