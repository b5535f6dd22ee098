"""What the console shows, for the whole process: ``quiet``, ``normal`` or ``verbose``.

normal: one labelled progress bar per stage (GRPO phases, generation, labeling, evaluation), the
loop's one-line stage summaries, and no warning that visplay can fix itself. Bars use tqdm's
``disable=None``: they are drawn only on a terminal, so a log file redirected from stderr holds no
``\\r`` fragments. quiet: no bars at all. verbose: bars plus every per-step GRPO log dict (those
always go to the run's metrics.jsonl, whatever the level). Set by `visplay evolve --quiet/--verbose`.
Test: `pytest tests/test_cli.py -k console`.
"""

from __future__ import annotations

import warnings

LEVELS = ("quiet", "normal", "verbose")
_level = "normal"


def set_level(level: str) -> None:
    global _level
    if level not in LEVELS:
        raise ValueError(f"console level must be one of {list(LEVELS)}, got {level!r}")
    _level = level


def level() -> str:
    return _level


def bar_disable() -> bool | None:
    """tqdm's ``disable`` argument: True when quiet, else None (draw only on a terminal)."""
    return True if _level == "quiet" else None


def quiet_library_warnings() -> None:
    """Hide the deprecation warnings raised inside TRL/transformers that no argument of ours avoids.

    Only warnings with these exact messages: visplay passes the new argument names itself
    (``activation_checkpointing``), so what is left is library code calling library code.
    """
    # trl.models.utils reads model.is_gradient_checkpointing (deprecated in transformers 5.23)
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
