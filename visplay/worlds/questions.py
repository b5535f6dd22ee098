"""The world's question grammar: generate, parse and answer (the oracle), with reasoning traces.

Every family can *parse* its own text back, so the oracle answers any question written in the
grammar, including ones a trained questioner invents; that is how pseudo-label accuracy is measured.
The counting families (`count`, `sum`) walk every object in reading order and mark it inline
(running tally if it matches, `-` if not): the comparison is then one dense step per object, the
decisive step a from-scratch model must learn (docs/experiments.md, session 6). The other families
list the matching cells in random order. Test: `pytest tests/test_world.py`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from visplay.answers import LETTERS, Grader
from visplay.answers import grade as grade_answer
from visplay.worlds.scene import COLOURS, SHAPES, SIZES, Obj, Scene

_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_Z = "|".join(SIZES)


@dataclass(frozen=True)
class Question:
    text: str
    family: str
    qtype: str
    answer: str
    think: str


def _cells(objs: list[Obj], rng: random.Random | None) -> str:
    cells = [o.cell for o in objs]
    if rng is not None:
        rng.shuffle(cells)
    return " ".join(cells) if cells else "none"


def _marked(objs, match, attrs: tuple[str, ...]) -> str:
    """Every object in reading order, ``cell <attrs> mark``; the mark is the running tally of
    matches, or ``-``: one perception and one comparison per object, both in the loss."""
    parts, tally = [], 0
    for o in objs:
        hit = match(o)
        tally += hit
        parts.append(" ".join([o.cell, *(getattr(o, a) for a in attrs), str(tally) if hit else "-"]))
    return ". ".join(parts) if parts else "none"


def _options(correct: str, pool: list[str], k: int, rng: random.Random) -> tuple[list[str], str]:
    others = [p for p in pool if p != correct]
    opts = rng.sample(others, min(k - 1, len(others))) + [correct]
    rng.shuffle(opts)
    return opts, LETTERS[opts.index(correct)]


def _fmt_options(opts: list[str]) -> str:
    return " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))


_OPTS_RE = r"((?: [A-E]\. [a-z]+)+)"


def _parse_options(s: str) -> list[str]:
    return re.findall(r"[A-E]\. ([a-z]+)", s)


def _letter(opts: list[str], value: str) -> str | None:
    return LETTERS[opts.index(value)] if opts.count(value) == 1 else None


def _fmt_ratio(x: float) -> str:
    return f"{round(x, 2):g}"


class Family:
    """One question family: sample parameters, render text, parse text, solve, explain."""

    name: str
    qtype: str
    pattern: re.Pattern

    def sample(self, scene: Scene, rng: random.Random) -> dict | None:
        raise NotImplementedError

    def text(self, p: dict) -> str:
        raise NotImplementedError

    def parse(self, text: str) -> dict | None:
        m = self.pattern.fullmatch(text.strip())
        return self.from_match(m) if m else None

    def from_match(self, m: re.Match) -> dict | None:
        raise NotImplementedError

    def solve(self, scene: Scene, p: dict) -> str | None:
        raise NotImplementedError

    def think(self, scene: Scene, p: dict, rng: random.Random | None) -> str:
        raise NotImplementedError


def _match(o: Obj, colour: str | None = None, shape: str | None = None, size: str | None = None) -> bool:
    return (colour is None or o.colour == colour) and (shape is None or o.shape == shape) and (
        size is None or o.size == size
    )


class Count(Family):
    name, qtype = "count", "numerical"
    pattern = re.compile(rf"How many (?:({_Z}) )?(?:({_C}) )?(objects|(?:{_S})s) are there\?")

    def sample(self, scene, rng):
        # Colour counts only: shape, size and colour+shape counts still parse (a trained questioner
        # may ask them), but with five comparison kinds the from-scratch model had not learned the
        # comparison at a quarter of its schedule (0.60, docs/experiments.md session 6); and no
        # "all objects": its answer is the scene's level itself, a pure length test.
        return {"size": None, "colour": rng.choice(list(COLOURS)), "shape": None}

    def text(self, p):
        words = [w for w in (p["size"], p["colour"]) if w] + [f"{p['shape']}s" if p["shape"] else "objects"]
        return f"How many {' '.join(words)} are there?"

    def from_match(self, m):
        noun = m.group(3)
        return {"size": m.group(1), "colour": m.group(2), "shape": None if noun == "objects" else noun[:-1]}

    def matches(self, scene, p):
        return [o for o in scene.objects if _match(o, p["colour"], p["shape"], p["size"])]

    def solve(self, scene, p):
        return str(len(self.matches(scene, p)))

    def think(self, scene, p, rng):
        attrs = tuple(a for a in ("size", "colour", "shape") if p[a]) or ("colour",)
        hits = set(self.matches(scene, p))
        return _marked(scene.objects, hits.__contains__, attrs)


class Sum(Family):
    name, qtype = "sum", "numerical"
    pattern = re.compile(rf"How many objects are ({_C}) or ({_C})\?")

    def sample(self, scene, rng):
        a, b = rng.sample(list(COLOURS), 2)
        return {"a": a, "b": b}

    def text(self, p):
        return f"How many objects are {p['a']} or {p['b']}?"

    def from_match(self, m):
        return None if m.group(1) == m.group(2) else {"a": m.group(1), "b": m.group(2)}

    def _parts(self, scene, p):
        return [[o for o in scene.objects if o.colour == p[k]] for k in ("a", "b")]

    def solve(self, scene, p):
        return str(sum(len(x) for x in self._parts(scene, p)))

    def think(self, scene, p, rng):
        return _marked(scene.objects, lambda o: o.colour in (p["a"], p["b"]), ("colour",))


class Attribute(Family):
    name, qtype = "attribute", "multiple choice"
    pattern = re.compile(rf"What (colour|shape) is the object in ([a-h][1-8])\?{_OPTS_RE}")

    def sample(self, scene, rng):
        if not scene.objects:
            return None
        o = rng.choice(scene.objects)
        attr = rng.choice(["colour", "shape"])
        pool = list(COLOURS) if attr == "colour" else list(SHAPES)
        opts, _ = _options(getattr(o, attr), pool, 4, rng)
        return {"attr": attr, "cell": o.cell, "options": opts}

    def text(self, p):
        return f"What {p['attr']} is the object in {p['cell']}? {_fmt_options(p['options'])}"

    def from_match(self, m):
        return {"attr": m.group(1), "cell": m.group(2), "options": _parse_options(m.group(3))}

    def solve(self, scene, p):
        o = scene.at(p["cell"])
        return _letter(p["options"], getattr(o, p["attr"])) if o else None

    def think(self, scene, p, rng):
        o = scene.at(p["cell"])
        return f"{p['cell']}: {o.size} {o.colour} {o.shape}" if o else f"{p['cell']}: empty"


class Column(Family):
    name, qtype = "column", "numerical"
    pattern = re.compile(rf"In which column is the ({_C}) ({_S})\?")

    def sample(self, scene, rng):
        uniq = [o for o in scene.objects if len(self._find(scene, o.colour, o.shape)) == 1]
        if not uniq:
            return None
        o = rng.choice(uniq)
        return {"colour": o.colour, "shape": o.shape}

    def _find(self, scene, colour, shape):
        return [o for o in scene.objects if o.colour == colour and o.shape == shape]

    def text(self, p):
        return f"In which column is the {p['colour']} {p['shape']}?"

    def from_match(self, m):
        return {"colour": m.group(1), "shape": m.group(2)}

    def solve(self, scene, p):
        found = self._find(scene, p["colour"], p["shape"])
        return str(found[0].col + 1) if len(found) == 1 else None

    def think(self, scene, p, rng):
        return f"{p['colour']} {p['shape']}: {_cells(self._find(scene, p['colour'], p['shape']), rng)}"


class Ratio(Family):
    name, qtype = "ratio", "regression"
    pattern = re.compile(rf"What fraction of the objects are ({_C})\?")

    def sample(self, scene, rng):
        return {"colour": rng.choice(list(COLOURS))} if scene.objects else None

    def text(self, p):
        return f"What fraction of the objects are {p['colour']}?"

    def from_match(self, m):
        return {"colour": m.group(1)}

    def solve(self, scene, p):
        if not scene.objects:
            return None
        k = sum(o.colour == p["colour"] for o in scene.objects)
        return _fmt_ratio(k / len(scene.objects))

    def think(self, scene, p, rng):
        hits = [o for o in scene.objects if o.colour == p["colour"]]
        return f"{p['colour']}: {_cells(hits, rng)}. objects: {len(scene.objects)}. {len(hits)}/{len(scene.objects)}"


class Compare(Family):
    name, qtype = "compare", "multiple choice"
    pattern = re.compile(rf"Are there more ({_C}) objects than ({_C}) objects\?{_OPTS_RE}")

    def sample(self, scene, rng):
        a, b = rng.sample(list(COLOURS), 2)
        opts = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
        return {"a": a, "b": b, "options": opts}

    def text(self, p):
        return f"Are there more {p['a']} objects than {p['b']} objects? {_fmt_options(p['options'])}"

    def from_match(self, m):
        opts = _parse_options(m.group(3))
        if m.group(1) == m.group(2) or sorted(opts) != ["no", "yes"]:
            return None
        return {"a": m.group(1), "b": m.group(2), "options": opts}

    def _parts(self, scene, p):
        return [[o for o in scene.objects if o.colour == p[k]] for k in ("a", "b")]

    def solve(self, scene, p):
        xa, xb = self._parts(scene, p)
        return _letter(p["options"], "yes" if len(xa) > len(xb) else "no")

    def think(self, scene, p, rng):
        xa, xb = self._parts(scene, p)
        rel = ">" if len(xa) > len(xb) else ("<" if len(xa) < len(xb) else "=")
        return f"{p['a']}: {_cells(xa, rng)}. {p['b']}: {_cells(xb, rng)}. {len(xa)}{rel}{len(xb)}"


class Leftmost(Family):
    name, qtype = "leftmost", "multiple choice"
    pattern = re.compile(rf"What colour is the left-most ({_S})\?{_OPTS_RE}")

    def _cands(self, scene, shape):
        return [o for o in scene.objects if o.shape == shape]

    def _left(self, scene, shape) -> Obj | None:
        c = self._cands(scene, shape)
        if not c:
            return None
        m = min(o.col for o in c)
        best = [o for o in c if o.col == m]
        return best[0] if len(best) == 1 else None

    def sample(self, scene, rng):
        shapes = [s for s in SHAPES if self._left(scene, s)]
        if not shapes:
            return None
        shape = rng.choice(shapes)
        opts, _ = _options(self._left(scene, shape).colour, list(COLOURS), 4, rng)
        return {"shape": shape, "options": opts}

    def text(self, p):
        return f"What colour is the left-most {p['shape']}? {_fmt_options(p['options'])}"

    def from_match(self, m):
        return {"shape": m.group(1), "options": _parse_options(m.group(2))}

    def solve(self, scene, p):
        o = self._left(scene, p["shape"])
        return _letter(p["options"], o.colour) if o else None

    def think(self, scene, p, rng):
        o = self._left(scene, p["shape"])
        tail = f"left-most: {o.cell} {o.colour}" if o else "left-most: none"
        return f"{p['shape']}s: {_cells(self._cands(scene, p['shape']), rng)}. {tail}"


#: Families whose trace is the inline-marked walk (`_marked`): the ladder's families.
MARKED_FAMILIES = ("count", "sum")

FAMILIES: dict[str, Family] = {f.name: f for f in (Count(), Sum(), Attribute(), Column(), Ratio(), Compare(), Leftmost())}


def check_families(names: list[str] | tuple[str, ...]) -> list[str]:
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown question families {unknown}; known: {', '.join(FAMILIES)}")
    if not names:
        raise ValueError("at least one question family is needed")
    return list(names)


def make_question(
    scene: Scene, rng: random.Random, families: list[str] | tuple[str, ...] = tuple(FAMILIES), shuffle_trace: bool = True
) -> Question:
    """A random answerable question about ``scene`` from one of ``families``."""
    names = check_families(families)
    for _ in range(100):
        fam = FAMILIES[rng.choice(names)]
        p = fam.sample(scene, rng)
        if p is None:
            continue
        ans = fam.solve(scene, p)
        if ans is None:
            continue
        return Question(fam.text(p), fam.name, fam.qtype, ans, fam.think(scene, p, rng if shuffle_trace else None))
    raise ValueError(f"no answerable question from families {names} for scene {scene.split}/{scene.index}")


def parse(text: str) -> tuple[Family, dict] | None:
    """The family and parameters of a question in the grammar, or None."""
    for fam in FAMILIES.values():
        p = fam.parse(text)
        if p is not None:
            return fam, p
    return None


def oracle(scene: Scene, text: str) -> str | None:
    """The true answer of any grammatical question about ``scene``; None if not answerable."""
    hit = parse(text)
    return hit[0].solve(scene, hit[1]) if hit else None


def grade(question: str, predicted: str | None, truth: str, grader: Grader | None = None) -> bool:
    """Is ``predicted`` right? `visplay.answers.grade` with the question's type from the grammar
    (regression answers count within ±`visplay.answers.REGRESSION_TOLERANCE`)."""
    hit = parse(question)
    return grade_answer(predicted, truth, hit[0].qtype if hit else "numerical", grader=grader).correct
