"""Config loading: defaults -> preset -> dotted overrides, with errors that name the key and file."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from visplay.config import ConfigError, load_config


def test_preset_and_overrides():
    c = load_config("tiny", ["eval.n=7", "world.max_objects=4", "eval.families=[count, sum]"])
    assert c.eval.n == 7 and c.world.max_objects == 4 and c.eval.families == ("count", "sum")
    assert c.pretrain.world.max_objects == 5  # from presets/tiny.yaml (the labelled levels)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["eval.nn=3"], "unknown key"),
        (["eval.n=abc"], "expected int"),
        (["eval.split=train"], "eval.split"),
        (["world.grid=1"], "world.grid"),
        (["eval.families=[dragons]"], "unknown question families"),
        (["novalue"], "key=value"),
    ],
)
def test_bad_overrides(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", overrides)


def test_bad_preset_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("nope")
    p = tmp_path / "bad.yaml"
    p.write_text("world: {grid: 5, colour: red}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*world.*colour"):
        load_config(p)
    p.write_text("world: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


#: the reasoner's GRPO objective on the tiny preset: its evolve.reasoner knobs are read (under SFT a --set of one is refused)
GRPO = ["evolve.committee=[]", "evolve.agreement=answer", "evolve.reasoner_objective=grpo", "evolve.coevolve=false"]


def test_overrides_coerce_by_declared_type():
    """YAML reads `1e-6` (no dot) as a string and `wandb` as a scalar: the field's type decides."""
    c = load_config("tiny", [*GRPO, "evolve.questioner.lr=1e-6", "evolve.report_to=wandb", "eval.temperature=0.5",
                             "evolve.reasoner.beta=2"])
    assert c.evolve.questioner.lr == 1e-6 and isinstance(c.evolve.questioner.lr, float)
    assert c.evolve.report_to == ("wandb",)
    assert c.eval.temperature == 0.5 and c.evolve.reasoner.beta == 2.0
    assert load_config("tiny", ["evolve.report_to=[wandb, tensorboard]"]).evolve.report_to == ("wandb", "tensorboard")
    with pytest.raises(ConfigError, match="evolve.questioner.lr: expected a number, got 'fast'"):
        load_config("tiny", ["evolve.questioner.lr=fast"])


def test_a_preset_extends_another_and_sets_only_what_differs(tmp_path):
    long, tiny = load_config("tiny-long"), load_config("tiny")
    assert long.evolve.iterations == 6 and long.evolve.survey_images == 3584
    assert long.evolve.min_kept > tiny.evolve.min_kept and long.evolve.band_high == tiny.evolve.band_high
    assert long.evolve.band(3) == tiny.evolve.band(3) and long.evolve.band(4) > tiny.evolve.band(4)  # the frontier guard
    assert long.evolve.committee == tiny.evolve.committee and long.world == tiny.world and long.model == tiny.model
    (tmp_path / "mine.yaml").write_text("extends: tiny-long\nevolve: {iterations: 2}\n")
    mine = load_config(str(tmp_path / "mine.yaml"))
    assert mine.evolve.iterations == 2 and mine.evolve.min_kept == long.evolve.min_kept
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(str(tmp_path / "loop.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "mine.yaml").replace("mine", "none"))


def test_preset_file_with_scientific_notation(tmp_path):
    """A YAML preset written as users write it (`lr: 1e-6`, `report_to: wandb`) loads."""
    path = tmp_path / "mine.yaml"
    path.write_text("evolve:\n  report_to: wandb\n  questioner:\n    lr: 1e-6\n")
    c = load_config(path)
    assert c.evolve.questioner.lr == 1e-6 and c.evolve.report_to == ("wandb",)


def test_trl_key_names_are_accepted_for_the_same_knob():
    c = load_config("tiny", [*GRPO, "evolve.reasoner.learning_rate=1e-4", "evolve.reasoner.max_steps=3",
                             "evolve.questioner.per_device_train_batch_size=2", "pretrain.learning_rate=2e-3"])
    assert (c.evolve.reasoner.lr, c.evolve.reasoner.steps, c.evolve.questioner.per_device_batch) == (1e-4, 3, 2)
    assert c.pretrain.lr == 2e-3
    assert load_config("tiny", [*GRPO, "evolve.reasoner.learning_rate=1e-4",
                                "evolve.reasoner.lr=1e-5"]).evolve.reasoner.lr == 1e-5
    from visplay.config import GRPOPhase, from_dict  # one YAML mapping giving both spellings is ambiguous

    with pytest.raises(ConfigError, match="'learning_rate' and 'lr' name the same setting"):
        from_dict(GRPOPhase, {"learning_rate": 1e-4, "lr": 1e-5})
    assert from_dict(GRPOPhase, {"learning_rate": 1e-4}).lr == 1e-4


def test_a_manifest_written_before_the_config_tree_was_unified_still_loads():
    """Runs started before `eval`/`bench`/`judge` and `sampler.backend` existed resume with their
    own settings: the loop's `evolve.eval` becomes `eval`, a `sampler.url` means the openai backend,
    and the old tiny-model shape keys (which the loop never reads) give way to today's."""
    from visplay.config import config_from_manifest, to_dict

    today = to_dict(load_config("tiny"))
    old = json.loads(json.dumps(today))
    old["evolve"]["eval"] = {**old.pop("eval"), "n": 300, "k": 5}
    for section in ("bench", "judge", "self_train"):
        old.pop(section)
    old["sampler"].pop("backend")
    old["sampler"]["url"] = "http://127.0.0.1:8000/v1"
    old["pretrain"]["model"] = {"vocab_size": 600, "hidden_size": 256, "layers": 4, "heads": 4, "kv_heads": 2}
    old["hardware"].update(accelerate_config="configs/accelerate/zero3.yaml", strategy="zero3")
    cfg = config_from_manifest(old)
    assert (cfg.eval.n, cfg.eval.k, cfg.eval.families) == (300, 5, ("count", "sum"))
    assert cfg.sampler.backend == "openai" and cfg.sampler.url == "http://127.0.0.1:8000/v1"
    assert cfg.pretrain.model == load_config("tiny").pretrain.model and cfg.judge.enabled is False
    assert config_from_manifest(today) == load_config("tiny")  # today's manifests read back unchanged


def test_sampling_sections_share_knobs_and_checks():
    """eval, bench and evolve are one set of sampling knobs with one check, named by section."""
    c = load_config("tiny")
    assert c.eval.params(5).n == 5 and c.eval.params(1, temperature=0).temperature == 0
    assert (c.bench.temperature, c.bench.top_k) == (0.0, 0)  # benchmarks are greedy by default
    for key in ("eval.top_p=0", "bench.top_k=-1", "evolve.max_new_tokens=0"):
        with pytest.raises(ConfigError, match=key.split("=")[0].replace(".", r"\.") + " must be"):
            load_config("tiny", [key])


def test_sections_live_beside_their_owners_and_declare_each_check_once():
    """The tree assembles sections defined next to the code that reads them; a GRPO phase checks
    its sampling knobs with the one rule every sampler uses (`Knobs`)."""
    import doctest

    import visplay.settings
    from visplay.config import Config, ConfigError, GRPOPhase
    from visplay.eval.world import EvalConfig
    from visplay.evolve.sections import EvolveConfig
    from visplay.sampling.factory import SamplerConfig

    assert doctest.testmod(visplay.settings).failed == 0
    hints = {f.name: f.type for f in dataclasses.fields(Config)}
    assert (hints["eval"], hints["evolve"], hints["sampler"]) == ("EvalConfig", "EvolveConfig", "SamplerConfig")
    assert Config().eval.__class__ is EvalConfig and Config().sampler.__class__ is SamplerConfig
    assert Config().evolve.__class__ is EvolveConfig
    for bad, message in (({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"), ({"top_k": -1}, "top_k must be >= 0"),
                         ({"seed": -1}, "seed must be in [0, 2**31)"), ({"temperature": 0.0}, "temperature must be > 0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            GRPOPhase(**bad)
    with pytest.raises(ConfigError, match=re.escape("evolve.questioner: top_p must be in (0, 1]")):
        load_config("tiny", ["evolve.questioner.top_p=1.5"])
