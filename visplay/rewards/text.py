"""The text of a completion as TRL hands it to a reward: a string, or a conversational message list.

>>> completion_text([{"role": "assistant", "content": "\\\\boxed{3}"}]), completion_text("plain")
('\\\\boxed{3}', 'plain')
"""

from __future__ import annotations


def completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": "..."}]
        return "".join(m.get("content", "") if isinstance(m.get("content"), str) else "" for m in completion)
    return completion
