"""Prompt builders for the two roles, as chat messages with one image slot.

The question comes *before* the image in the reasoner prompt: under causal attention the image
tokens can then attend to the question (measured on this project's tiny model: the one change that
made it bind attributes to positions). Test: `pytest tests/test_roles.py`.
"""

from __future__ import annotations

QUESTIONER_INSTRUCTION = (
    "Ask one hard question about the image, with a single correct answer, as "
    "<type>multiple choice|numerical|regression</type><question>...</question><answer>...</answer>."
)
REASONER_INSTRUCTION = "Reason in <think></think>, then answer in \\boxed{}."

Messages = list[dict]


def questioner_messages() -> Messages:
    """The questioner sees only the image and the instruction: no question, no answer."""
    return [{"role": "user", "content": [{"type": "text", "text": QUESTIONER_INSTRUCTION}, {"type": "image"}]}]


def reasoner_messages(question: str) -> Messages:
    return [
        {"role": "user", "content": [{"type": "text", "text": f"{question} {REASONER_INSTRUCTION}"}, {"type": "image"}]}
    ]


def questioner_target(qtype: str, question: str, answer: str) -> str:
    return f"<type>{qtype}</type><question>{question}</question><answer>{answer}</answer>"
