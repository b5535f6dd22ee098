"""Config loading: defaults -> preset -> dotted overrides, with errors that name the key and file."""

from __future__ import annotations

import pytest

from visplay.config import ConfigError, load_config


def test_preset_and_overrides():
    c = load_config("tiny", ["eval.n=7", "world.max_objects=4", "eval.families=[count, sum]"])
    assert c.eval.n == 7 and c.world.max_objects == 4 and c.eval.families == ("count", "sum")
    assert c.pretrain.world.max_objects == 6  # from presets/tiny.yaml


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
