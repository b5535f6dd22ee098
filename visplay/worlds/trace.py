"""The world task's format, in one place: its image ids, its reasoning trace, and the trace key.

* **Image id**: a world scene is ``world/<split>/<index>`` (`scene_id` writes it, `parse_world_id`
  reads it back), so a row of any stage says which scene it shows without carrying the scene.
* **Trace**: a reasoner completion is ``<think>TRACE</think>\\boxed{ANSWER}`` (`write_trace`).
  `split_trace` is the one reader: the reasoner's format check (`visplay.roles.parsing`), the walk
  orders of pretraining and the trace key all read a completion through it.
* **Trace key**: the label-free verifier of the committee's ``agreement: trace`` -- the objects a
  marked walk lists and the answer, when the answer follows from the listing (`trace_key`).

The question grammar and the oracle stay in `visplay.worlds.questions`, the scenes in
`visplay.worlds.scene`. Test: `pytest tests/test_world.py tests/test_committee.py tests/test_roles.py`.
"""

from __future__ import annotations

import re

from visplay.answers import normalize_answer
from visplay.worlds.questions import Question, parse
from visplay.worlds.scene import COLOURS, Scene

_C = "|".join(COLOURS)
_WORLD_ID = re.compile(r"world/(\w+)/(\d+)")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# -- image ids --------------------------------------------------------------------------------------


def world_id(split: str, index: int) -> str:
    """The image id of scene ``index`` of ``split``.

    >>> world_id("unlabeled", 12), parse_world_id("world/unlabeled/12"), parse_world_id("photo.png")
    ('world/unlabeled/12', ('unlabeled', 12), None)
    """
    return f"world/{split}/{index}"


def scene_id(scene: Scene) -> str:
    """The image id of ``scene``."""
    return world_id(scene.split, scene.index)


def parse_world_id(image_id: str) -> tuple[str, int] | None:
    """(split, index) of a world image id; None for any other image (a file, a parquet row)."""
    m = _WORLD_ID.fullmatch(image_id)
    return (m.group(1), int(m.group(2))) if m else None


def has_trace_key(image_id: str) -> bool:
    """Only world images have a trace key (the committee's ``agreement: trace``)."""
    return parse_world_id(image_id) is not None


# -- the trace --------------------------------------------------------------------------------------


def write_trace(think: str, answer: str) -> str:
    """A completion in the reasoner's format: the trace, then the boxed answer.

    >>> write_trace("a1 red 1", "1")
    '<think>a1 red 1</think>\\\\boxed{1}'
    """
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\\boxed{{{answer}}}"


def target(question: Question) -> str:
    """The reasoner's training completion for a generated question: its trace, then its answer."""
    return write_trace(question.think, question.answer)


def split_trace(completion: object) -> tuple[str, str, str] | None:
    """(before, trace, after) around the first ``<think>`` and the first ``</think>`` after it;
    None when a tag is missing (or the completion is not a string).

    >>> split_trace(" <think>a1 red 1</think> \\\\boxed{1}")
    (' ', 'a1 red 1', ' \\\\boxed{1}')
    """
    if not isinstance(completion, str):
        return None
    before, opened, rest = completion.partition(THINK_OPEN)
    think, closed, after = rest.partition(THINK_CLOSE)
    return (before, think, after) if opened and closed else None


def think_text(completion: object) -> str | None:
    """The text between ``<think>`` and ``</think>`` of a completion, or None without both tags."""
    parts = split_trace(completion)
    return None if parts is None else parts[1]


# -- walk orders (pretraining targets) -----------------------------------------------------------


#: Orders of the marked walk (`in_walk_order`): ``reading`` as `_marked` writes it; ``rows`` grouped by
#: grid row, every row named (the trace ends after the last row, not after a learnt number of
#: objects: session 8's length wall); ``rows-reversed`` the same from the last row, right to left
#: (a committee partner that drops other objects than the forward walk; docs/experiments.md, session 9).
WALKS = ("reading", "rows", "rows-reversed")
_BOXED = re.compile(r"\\boxed\{(.*)\}", re.S)


def in_walk_order(target: str, walk: str, rows: str = "abcde") -> str:
    """A marked-walk training target rewritten in another `WALKS` order, tallies recomputed (the
    answer is unchanged); other targets unchanged. ``rows``: the grid's row letters.

    >>> t = "<think>a1 red 1. c3 blue -. c4 red 2</think>\\\\boxed{2}"
    >>> in_walk_order(t, "rows")
    '<think>a: a1 red 1. b: none. c: c3 blue -. c4 red 2. d: none. e: none</think>\\\\boxed{2}'
    >>> in_walk_order(t, "rows-reversed")
    '<think>e: none. d: none. c: c4 red 1. c3 blue -. b: none. a: a1 red 2</think>\\\\boxed{2}'
    """
    if walk not in WALKS:
        raise ValueError(f"unknown walk {walk!r}; known: {', '.join(WALKS)}")
    parts = split_trace(target)
    boxed = _BOXED.fullmatch(parts[2]) if parts is not None and not parts[0] else None
    if walk == "reading" or boxed is None:
        return target
    entries = [] if parts[1] == "none" else parts[1].split(". ")
    backwards = walk == "rows-reversed"
    tally, out = 0, []
    for row in (rows[::-1] if backwards else rows):
        mine = []
        for entry in (reversed if backwards else list)([e for e in entries if e[0] == row]):
            *head, mark = entry.split(" ")
            if mark != "-":
                tally += 1
                mark = str(tally)
            mine.append(" ".join([*head, mark]))
        out.append(f"{row}: " + (". ".join(mine) if mine else "none"))
    return write_trace(". ".join(out), boxed.group(1))


# -- the trace key ---------------------------------------------------------------------------------


_LISTED = re.compile(rf"\b([a-h][1-8]) ({_C})\b")


def listed_objects(completion: str | None) -> tuple[str, ...] | None:
    """The ``cell colour`` entries a reasoner completion's trace lists, in order (None: no trace).

    >>> listed_objects("<think>b2 red 1. a1 blue -</think>\\\\boxed{1}")
    ('b2 red', 'a1 blue')
    """
    think = think_text(completion)
    return None if think is None else tuple(f"{cell} {colour}" for cell, colour in _LISTED.findall(think))


_ENTRY = re.compile(rf"\b([a-h][1-8]) ({_C}) (\d+|-)(?=\.|$)")


def _counted_colours(question: str) -> frozenset[str] | None:
    """The colours a counting question counts (count of a colour, sum of two), or None."""
    hit = parse(question)
    if hit is None:
        return None
    fam, p = hit
    if fam.name == "sum":
        return frozenset((p["a"], p["b"]))
    if fam.name == "count" and p["colour"] and not p["shape"] and not p["size"]:
        return frozenset((p["colour"],))
    return None


def follows_from_listing(question: str, completion: str | None, answer: str | None) -> bool:
    """Does a marked walk agree with itself: each mark the running tally of the listed objects whose
    colour the question counts (``-`` for the others), the answer the last tally? Label-free: the
    question's rule applied to the trace's *own* listing, never to the scene. Above the labelled
    levels two walks in opposite orders both mark their last object wrongly (docs/experiments.md,
    session 9): the listing agrees, the answer does not follow from it. Questions that are not
    colour counts: True (nothing to check).

    >>> follows_from_listing("How many red objects are there?", "<think>a1 red 1. b2 blue -</think>\\\\boxed{1}", "1")
    True
    >>> follows_from_listing("How many red objects are there?", "<think>a1 red 1. b2 blue 2</think>\\\\boxed{2}", "2")
    False
    """
    colours = _counted_colours(question)
    if colours is None:
        return True
    think = think_text(completion)
    if think is None or answer is None:
        return False
    entries = _ENTRY.findall(think)
    if len(entries) != len(_LISTED.findall(think)):
        return False  # an object listed without its mark
    tally = 0
    for _, colour, mark in entries:
        if colour in colours:
            tally += 1
            if mark != str(tally):
                return False
        elif mark != "-":
            return False
    return normalize_answer(answer) == str(tally)


def trace_key(question: str, completion: str | None, answer: str | None) -> str | None:
    """The world's canonical key of a reasoning chain: the sorted objects its trace lists, and the
    answer -- what decides a counting answer, with the walk's order and marks left out (two chains
    with the same key saw the same scene and concluded the same). None without a trace or answer,
    or when the answer does not follow from the chain's own listing (`follows_from_listing`).

    >>> trace_key("How many red objects are there?", "<think>b2 red 1. a1 blue -</think>\\\\boxed{1}", "1")
    'a1 blue. b2 red => 1'
    """
    listed = listed_objects(completion)
    if listed is None or answer is None or not follows_from_listing(question, completion, answer):
        return None
    return f"{'. '.join(sorted(set(listed))) or 'none'} => {normalize_answer(answer)}"


def listing_complete(scene: Scene, completion: str | None) -> bool:
    """Does the trace list exactly the scene's objects (each once, right colour)? The length probe:
    above the labelled levels a base drops objects to keep the walk as long as it learnt."""
    listed = listed_objects(completion)
    return listed is not None and sorted(listed) == sorted(f"{o.cell} {o.colour}" for o in scene.objects)
