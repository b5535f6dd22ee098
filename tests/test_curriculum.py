"""The label-free curriculum and the run seeds' own images: the survey orders an unsorted pool by the
reasoner's answer length, never by a scene's level; a run on a folder of the same images, whose
files carry no level or truth, trains on identical rows; each run seed draws its own scenes.

One test runs two micro loops on the shipped models (~1 min on 2 cores); the rest are in memory.
Run: ``pytest -q tests/test_curriculum.py``.
"""

from __future__ import annotations

import itertools
import json

import pyarrow.parquet as pq
import pytest

from visplay.config import WORLD_SEED_SCENES, ConfigError, load_config
from visplay.data.sources import WorldSource
from visplay.eval.world import paired, seeds_gain
from visplay.evolve import curriculum
from visplay.evolve.context import open_images
from visplay.io import image_bytes

#: the label columns a reasoner trains on, and what decides them
TRAINING_COLUMNS = ("sample", "question", "questioner_answer", "valid", "samples", "label", "agreement", "kept", "chains")


def test_the_easiest_unseen_images_come_first_ties_in_source_order() -> None:
    items = list(itertools.islice(WorldSource(load_config("tiny").source_world, "unlabeled"), 5))
    rows = [{"image_id": it.id, "position": i, "difficulty": d} for i, (it, d) in enumerate(zip(items, [9, 3, 7, 3, 5]))]
    assert curriculum.order(rows) == [items[i].id for i in (1, 3, 4, 2, 0)]
    taken = curriculum.take_easiest(items[::-1], rows, seen={items[3].id}, n=2)
    assert [it.id for it in taken] == [items[1].id, items[4].id]
    assert curriculum.difficulty("<think>a: a1 red -.</think>\\boxed{1}") == 4


@pytest.mark.parametrize("overrides, message", [
    (["evolve.survey_images=100", "evolve.images_per_iteration=512"], "survey_images must be 0"),
    (["evolve.survey_images=-1"], "survey_images must be 0"),
    (["evolve.ladder=true"], "choose one"),
    (["evolve.seed=1000"], "evolve.seed must be in"),
])
def test_curriculum_settings_that_cannot_work_are_refused(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_each_run_seed_draws_its_own_unlabeled_scenes() -> None:
    ids = {}
    for seed in (0, 1, 2):
        source = open_images(load_config("tiny", [f"evolve.seed={seed}"]))
        ids[seed] = [it.id for it in itertools.islice(source, 50)]
        assert ids[seed][0] == f"world/unlabeled/{seed * WORLD_SEED_SCENES}"
    assert not set(ids[0]) & set(ids[1]) and not set(ids[1]) & set(ids[2])


def test_seeds_gain_counts_an_item_once_however_many_seeds_score_it() -> None:
    before = [False] * 60 + [True] * 40
    after = [True] * 30 + [False] * 30 + [True] * 40
    one = seeds_gain([(before, after)])
    three = seeds_gain([(before, after)] * 3)
    assert three["gain"] == one["gain"] == pytest.approx(0.3)
    # three copies of the same items are no more precise than one: the SE is the items', not divided by sqrt 3
    assert three["se"] == pytest.approx(one["se"]) == pytest.approx(paired(before, after)["se"], rel=0.15)
    assert three["ci95"][0] < 0.3 < three["ci95"][1]
    with pytest.raises(ValueError, match="same items"):
        seeds_gain([(before, after), (before[:50], after[:50])])


def test_a_folder_of_the_same_images_trains_on_identical_rows(tmp_path) -> None:
    """The curriculum reads nothing but the models' outputs: two micro loops, one on world scenes
    (whose rows record their level and the oracle's answer, for measurement) and one on a folder of
    the same scenes' PNGs (no level, no truth), take the same images in the same order, and label
    and keep the same rows. Chain agreement in both (`evolve.agreement: chain`, the label rule that
    knows no task): it runs unchanged on files that carry nothing but pixels."""
    from visplay.cli import main

    common = ["--quiet", "--set", "evolve.iterations=2", "--set", "evolve.images_per_iteration=12",
              "--set", "evolve.survey_images=40", "--set", "evolve.questioner_images=4",
              "--set", "evolve.questioner.steps=1", "--set", "evolve.label_samples=4", "--set", "evolve.sft_epochs=1",
              "--set", "evolve.agreement=chain", "--set", "eval.n=12", "--set", "eval.k=1",
              "--set", "evolve.report_to=[]", "--set", "evolve.seed=3"]
    world_cfg = load_config("tiny", ["evolve.seed=3"])
    folder = tmp_path / "images"
    folder.mkdir()
    for i, item in enumerate(itertools.islice(open_images(world_cfg), 40)):
        item.image.save(folder / f"{i:04d}.png")
    assert main(["evolve", "--run", str(tmp_path / "world"), *common]) == 0
    assert main(["evolve", "--run", str(tmp_path / "folder"), *common, "--set", f"evolve.source=folder:{folder}"]) == 0

    surveys = [pq.read_table(tmp_path / r / "survey.parquet").to_pylist() for r in ("world", "folder")]
    assert [r["difficulty"] for r in surveys[0]] == [r["difficulty"] for r in surveys[1]]
    assert {r["level"] for r in surveys[0]} <= set(range(6, 11)) and {r["level"] for r in surveys[1]} == {None}
    kept = 0
    for t in (1, 2):
        world, files = (pq.read_table(tmp_path / r / f"iter{t}" / "labels.parquet").to_pylist() for r in ("world", "folder"))
        assert [image_bytes(r["image_png"]) for r in world] == [image_bytes(r["image_png"]) for r in files]
        for column in TRAINING_COLUMNS:
            assert [r[column] for r in world] == [r[column] for r in files], (t, column)
        assert all(r["level"] is None and r["true_answer"] is None for r in files)
        assert {r["rule"] for r in files if r["valid"]} == {"chain"}
        kept += sum(r["kept"] for r in files)
    assert kept  # the rule that knows no task kept labels on the folder
    # the easiest first: iteration 1's images had shorter survey answers than iteration 2's
    manifest = json.loads((tmp_path / "world" / "manifest.json").read_text())["stages"]
    hardness = {r["image_id"]: r["difficulty"] for r in surveys[0]}
    first, second = (sorted(hardness[i] for i in manifest[f"iter{t}/questions"]["image_ids"]) for t in (1, 2))
    assert max(first) <= min(second)
