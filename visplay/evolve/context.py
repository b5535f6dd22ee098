"""What every stage of the loop gets (`Context`), and the inputs the stages share: which images
an iteration takes, its sampling parameters, and a sampler for a model.

A `Context` is rebuilt from the run directory alone (the manifest's config and finished stages), so
the loop, a shard worker, a GRPO rank and a committee member's worker all see the same iteration.
`open_images` is the one place that turns ``evolve.source`` + pixel range + image column into an
image source. Test: `pytest tests/test_evolve.py tests/test_curriculum.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from visplay.answers import Grader
from visplay.config import Config
from visplay.data.sources import ImageSource, WorldSource, open_source, skip_seen
from visplay.dist import Ranks
from visplay.evolve import curriculum
from visplay.evolve.launch import WorkerError
from visplay.evolve.seeds import first_scene
from visplay.run.rundir import RunDir
from visplay.run.stages import BASELINE, stage_name
from visplay.sampling.base import SamplingParams
from visplay.sampling.factory import open_sampler

Say = Callable[[str], None]


@dataclass
class Context:
    """What a stage body gets: the run's config and directory, the iteration, a grader, a printer."""

    cfg: Config
    run: RunDir
    base: Path  # the base model both lineages start from
    t: int
    grader: Grader
    say: Say = print
    ranks: Ranks | None = field(default=None)  # set on every rank of a launched GRPO worker

    def name(self, kind: str) -> str:
        return BASELINE if self.t == 0 else stage_name(self.t, kind)

    def rung(self) -> int:
        """The ladder step iteration t stands on: t, or with `evolve.advance_kept_share` one more
        than the climbs so far -- an iteration climbs only when the labels stage kept at least that
        share of its own level's questions (label-free evidence that the level is learnt)."""
        share, rung = self.cfg.evolve.advance_kept_share, 1
        if share is None:
            return self.t
        for s in range(1, self.t):
            level = self.cfg.source_world_at(rung).min_objects
            mix = self.run.stage_info(stage_name(s, "labels")).get("by_level", {}).get(str(level), {})
            rung += bool(mix.get("valid")) and mix["kept"] / mix["valid"] >= share
        return rung

    def model(self, role: str, t: int) -> Path:
        """The ``role`` model (questioner | reasoner) after iteration ``t`` (0: the base model)."""
        if t == 0:
            return self.base
        stage = stage_name(t, role)
        model = self.run.stage_info(stage).get("model")
        if not self.run.is_done(stage) or not model:
            raise WorkerError(f"{stage} is not finished in {self.run.manifest_path}; iteration {self.t} needs it")
        return Path(model)

    def sampler(self, model_dir: Path, progress: bool = False, stage: str | None = None):
        """A stage's sampler of ``model_dir`` (transformers in-process, or a server: docs/scaling.md);
        a launched server logs to ``<stage>.server.log`` in the run directory."""
        log = self.run.log_path(stage or self.name("eval"), "server")
        return open_sampler(self.cfg.sampler, model_dir, self.cfg.dtype, log_path=log, progress=progress)


def _is_parquet(spec: str) -> bool:
    kind, sep, _ = spec.partition(":")
    if sep and kind in ("parquet", "folder", "world"):
        return kind == "parquet"
    path = Path(spec).expanduser()
    return path.suffix.lower() == ".parquet" or (path.is_dir() and any(p.is_file() for p in path.glob("*.parquet")))


def open_images(cfg: Config, t: int = 1) -> ImageSource:
    """Iteration ``t``'s image source with its pixel range (and image column, for parquet)."""
    ev = cfg.evolve
    kw = {k: v for k, v in (("min_pixels", ev.min_pixels), ("max_pixels", ev.max_pixels)) if v is not None}
    if _is_parquet(ev.source):
        kw["column"] = ev.image_column
        kw["allow_outside_root"] = ev.allow_outside_source
    if ev.source.startswith("world"):  # each run seed its own scenes: seeds differ in their data
        kw["start"] = first_scene(ev.seed)
    return open_source(ev.source, world_config=cfg.source_world_at(t), **kw)


def seen_ids(run: RunDir, upto: int) -> set[str]:
    """Ids of the images iterations 1..upto-1 asked questions about (never reused)."""
    seen: set[str] = set()
    for t in range(1, upto):
        seen.update(run.stage_info(stage_name(t, "questions")).get("image_ids", []))
    return seen


def take_images(ctx: Context, n: int, replay: bool = False):
    """The next ``n`` images of the source that no earlier iteration used, and the skip counts:
    in source order, or with `evolve.survey_images` the easiest unseen ones of the surveyed pool
    (`visplay.evolve.curriculum`); with ``replay``, then `evolve.replay_images` more from the
    levels below the ladder's level."""
    rung = ctx.rung()
    source = open_images(ctx.cfg, rung)
    seen = seen_ids(ctx.run, ctx.t)
    if ctx.cfg.evolve.survey_images:
        rows = curriculum.read_survey(ctx.run.survey_path)
        if rows is None:
            raise WorkerError(f"{ctx.run.survey_path} is missing; the loop surveys the pool "
                              "before iteration 1 (visplay evolve --resume)")
        items = curriculum.take_easiest(source, rows, seen, n)
    else:
        items = list(itertools.islice(skip_seen(source, seen), n))
    if not items:
        raise ValueError(f"image source {ctx.cfg.evolve.source} has no unseen images left for iteration {ctx.t}")
    below = ctx.cfg.replay_world_at(rung) if replay else None
    if below is not None:
        split = ctx.cfg.evolve.source.partition(":")[2] or "unlabeled"
        older = WorldSource(below, split, start=first_scene(ctx.cfg.evolve.seed, replay=True))
        items += list(itertools.islice(skip_seen(older, seen), ctx.cfg.evolve.replay_images))
    return items, dict(source.skipped)


def stage_params(cfg: Config, t: int) -> SamplingParams:
    """The sampling parameters of iteration ``t``'s generation and labeling stages."""
    return cfg.evolve.params(1, seed=cfg.evolve.seed + t)
