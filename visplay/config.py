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
class GRPOPhase:
    """One GRPO phase (questioner or reasoner): `prompts_per_step` x `num_generations` rollouts a step."""

    steps: int = 10
    prompts_per_step: int = 8
    num_generations: int = 8
    lr: float = 5e-5
    beta: float = 0.04  # KL to the phase's starting model; > 0 guards against reward hacking
    temperature: float = 1.0
    top_k: int = 40
    max_completion_length: int = 64
    save_steps: int = 5
    seed: int = 0
    gradient_checkpointing: bool = False  # on for 3B/7B presets
    freeze_vision: bool = True  # train the LM and the merger, as in pretraining and the reference
    max_kl: float = 10.0  # health guard: stop the phase when the logged KL exceeds this
    min_entropy: float = 0.02  # health guard: stop the phase when sampling entropy collapses

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError("GRPO needs num_generations >= 2 (advantages are relative within a group)")
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ConfigError("steps and prompts_per_step must be >= 1")
        if self.beta < 0:
            raise ConfigError(f"beta (KL coefficient) must be >= 0, got {self.beta}")


@dataclass
class EvolveConfig:
    """The self-evolution loop. Ablations are the three switches at the end."""

    iterations: int = 3
    source: str = "world:unlabeled"  # or folder:/path, parquet:/path (Vision-SR1 layout)
    questioner_images: int = 64  # images for the questioner's GRPO phase, per iteration
    images_per_iteration: int = 128  # images the trained questioner writes questions for
    questions_per_image: int = 1
    reward_samples: int = 10  # m: frozen-reasoner answers per question in the questioner reward
    label_samples: int = 9  # m: reasoner answers per question for the silver label
    band_low: float = 0.25
    band_high: float = 0.75
    diversity_threshold: float = 0.5
    temperature: float = 1.0
    top_k: int = 40
    max_new_tokens: int = 64
    seed: int = 0
    chunk_size: int = 32  # images (questions) per durable part of the generation and labeling stages
    grader_timeout: float = 5.0
    grader_workers: int = 1
    report_to: tuple[str, ...] = ("tensorboard",)
    questioner: GRPOPhase = field(default_factory=GRPOPhase)
    reasoner: GRPOPhase = field(default_factory=GRPOPhase)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n=300, k=5))
    diversity_penalty: bool = True  # ablation: False drops the penalty
    train_questioner: bool = True  # ablation: False keeps the base questioner frozen
    labels: str = "majority"  # ablation: "questioner" trains on the questioner's own answers

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"evolve.iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.band_low <= self.band_high <= 1:
            raise ConfigError(f"need 0 <= evolve.band_low <= evolve.band_high <= 1, got {self.band_low}, {self.band_high}")
        if self.labels not in ("majority", "questioner"):
            raise ConfigError(f"evolve.labels must be 'majority' or 'questioner', got {self.labels!r}")
        if min(self.questioner_images, self.images_per_iteration, self.questions_per_image,
               self.reward_samples, self.label_samples) < 1:
            raise ConfigError("evolve image/question/sample counts must be >= 1")


@dataclass
class Config:
    model: str = "tiny"
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)


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
