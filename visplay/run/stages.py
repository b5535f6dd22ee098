"""The order of the loop's stages, and what each reads and writes: the one copy everything reads.

    iter0/eval                 held-out accuracy of the base model
    for t in 1..N: STAGES      questioner, questions, labels, reasoner, eval

`visplay.evolve.loop` runs the list (each entry's body is `visplay.evolve.bodies.run_<kind>`);
`visplay status`, the report, the fault harness (tests/faults.py), the kill sweep and the dry-run
plan read it. No imports from visplay, so `visplay status` stays instant. Paths of a stage's outputs
come from `visplay.run.rundir.RunDir` (`output`, `parts`, `checkpoints`), which reads ``output``
here. Test: `pytest tests/test_evolve.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    kind: str  # the stage's name inside an iteration: iter<t>/<kind>
    output: str  # what it writes, inside iter<t>/: a model folder, a parquet file or a folder
    reads: str  # what it needs (for docs/architecture.md and the dry-run plan)
    trains: bool = False  # a training phase: checkpoints in <output>.ckpt (GRPO: may run through hardware.launcher)
    chunked: bool = False  # written in durable chunk parts (iter<t>/<kind>.parts), may run as shards


#: One iteration, in the order the loop runs it.
STAGES: tuple[Stage, ...] = (
    Stage("questioner", "questioner", "unseen images; the frozen reasoner R_{t-1} (inside the reward)", trains=True),
    Stage("questions", "questions.parquet", "unseen images; the questioner Q_t", chunked=True),
    Stage("labels", "labels.parquet", "iter<t>/questions.parquet; R_{t-1} and evolve.committee's members (m samples "
          "each, the vote of evolve.agreement)", chunked=True),
    Stage("reasoner", "reasoner", "the kept rows of iter<t>/labels.parquet (or of every iteration so far); "
          "R_{t-1} (and the co-evolving members), trained by evolve.reasoner_objective", trains=True),
    Stage("eval", "eval", "held-out world scenes; the reasoner R_t"),
)
#: The stage before the first iteration: the base model's held-out accuracy (an `eval` stage).
BASELINE = "iter0/eval"
ITERATION_STAGES = tuple(s.kind for s in STAGES)
MODEL_STAGES = tuple(s.kind for s in STAGES if s.trains)
CHUNKED_STAGES = tuple(s.kind for s in STAGES if s.chunked)
BY_KIND = {s.kind: s for s in STAGES}

_NAME = re.compile(r"iter(\d+)/(\w+)")


def stage_name(t: int | str, kind: str) -> str:
    return f"iter{t}/{kind}"


def iteration_folder(t: int) -> str:
    """The folder of iteration ``t`` inside a run (``iter<t>``): where its stages write."""
    return f"iter{t}"


def split_stage(name: str) -> tuple[int, str] | None:
    """(t, kind) of anything shaped like a stage name, kinds this version does not know included
    (an older manifest's), else None; `parse_stage` is the strict one.

    >>> split_stage("iter3/reasoner"), split_stage("iter2/bench"), split_stage("notes")
    ((3, 'reasoner'), (2, 'bench'), None)
    """
    m = _NAME.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else None


CHECKPOINT_SUFFIX = ".ckpt"


def checkpoint_dir(out_dir) -> Path:
    """Where a training phase saving to ``out_dir`` keeps its Trainer checkpoints: ``<out_dir>.ckpt``
    (removed once the model is saved; a killed phase resumes there).

    >>> checkpoint_dir("runs/x/iter1/questioner").as_posix()
    'runs/x/iter1/questioner.ckpt'
    """
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + CHECKPOINT_SUFFIX)


def stage_at(path) -> str:
    """The stage whose output or checkpoints are at ``path``.

    >>> stage_at("runs/x/iter1/questioner.ckpt"), stage_at("runs/x/iter2/reasoner")
    ('iter1/questioner', 'iter2/reasoner')
    """
    path = Path(path)
    return f"{path.parent.name}/{path.name.removesuffix(CHECKPOINT_SUFFIX)}"


def stage_names(iterations: int) -> list[str]:
    """Every stage of a run of ``iterations`` iterations, in the loop's order.

    >>> stage_names(1)
    ['iter0/eval', 'iter1/questioner', 'iter1/questions', 'iter1/labels', 'iter1/reasoner', 'iter1/eval']
    """
    return [BASELINE] + [stage_name(t, s.kind) for t in range(1, iterations + 1) for s in STAGES]


def parse_stage(name: str) -> tuple[int, str]:
    """(t, kind) of a stage name; ValueError for anything that is not one of the loop's stages.

    >>> parse_stage("iter2/labels")
    (2, 'labels')
    """
    m = _NAME.fullmatch(name)
    if not m or m.group(2) not in BY_KIND or (m.group(1) == "0") != (name == BASELINE):
        raise ValueError(f"unknown stage {name!r}; expected {BASELINE} or iter<t>/{'|'.join(ITERATION_STAGES)}")
    return int(m.group(1)), m.group(2)
