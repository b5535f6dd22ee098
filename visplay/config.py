"""Typed configs: dataclass defaults -> YAML preset -> `a.b=value` overrides, validated on load.

Unknown keys are errors that name the key and the file, never silently ignored.
Test: `pytest tests/test_config.py`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visplay.tiny.pretrain import PretrainConfig
from visplay.worlds.questions import FAMILIES, check_families
from visplay.worlds.scene import SPLITS, WorldConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = REPO_ROOT / "presets"
#: Names that resolve to models shipped in this repository.
EMBEDDED_MODELS = {"tiny": REPO_ROOT / "models" / "tiny"}


class ConfigError(ValueError):
    pass


@dataclass
class EvalConfig:
    """World evaluation: greedy, maj@k and pass@k on scenes of ``split`` never used in training."""

    split: str = "heldout"
    n: int = 500
    k: int = 10
    temperature: float = 1.0
    top_k: int = 40
    max_new_tokens: int = 48
    seed: int = 0
    families: tuple[str, ...] = tuple(FAMILIES)

    def __post_init__(self) -> None:
        if self.split not in SPLITS or self.split == "train":
            raise ConfigError(f"eval.split must be one of {[s for s in SPLITS if s != 'train']}, got {self.split!r}")
        if self.n < 1 or self.k < 1:
            raise ConfigError(f"eval.n and eval.k must be >= 1, got n={self.n}, k={self.k}")
        check_families(self.families)


@dataclass
class Config:
    model: str = "tiny"
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def resolve_model(name_or_path: str) -> Path:
    return EMBEDDED_MODELS.get(name_or_path, Path(name_or_path))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def load_config(preset: str | Path | None = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the preset (a name in presets/ or a YAML path), then ``key=value`` overrides."""
    data: dict = {}
    where = "defaults"
    if preset is not None:
        path = Path(preset)
        if not path.suffix:
            path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise ConfigError(f"preset {preset!r} not found (looked for {path}); known presets: {known}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        where = str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. eval.n=100)")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
        where = f"{where} + overrides"
    return from_dict(Config, data, where)
