"""Typed configs: dataclass defaults -> YAML preset -> `a.b=value` overrides, validated on load.

Unknown keys are errors that name the key and the file, never silently ignored; missing required
keys are errors that name the key. Presets: `presets/tiny.yaml` (the embedded CPU model) and the
real-scale `qwen2_5_vl_3b`, `qwen2_5_vl_7b`, `mimo_vl_7b` (docs/scaling.md).
Test: `pytest tests/test_config.py tests/test_scale.py`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visplay.arch import ArchConfig
from visplay.eval.judge import DEFAULT_JUDGE_KEY_ENV, JudgeConfig
from visplay.eval.run import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS, BenchConfig
from visplay.evolve.self_train import SelfTrainConfig
from visplay.eval.world import EvalConfig
from visplay import modes
from visplay.evolve.sections import ROLE_REWARDS, VLLM_MODES, EvolveConfig, GRPOPhase, HardwareConfig, SFTPhase
from visplay.evolve.seeds import REPLAY_START, WORLD_SEED_SCENES
from visplay.sampling.factory import SAMPLER_BACKENDS, VLLM_LAUNCH, VLLM_URL, SamplerConfig
from visplay.settings import REPO_ROOT, ConfigError, Sampling, base_url, require
from visplay.tiny.pretrain import PretrainConfig
from visplay.worlds.scene import WorldConfig
from visplay.run.publish import final_model

#: The sections, each beside the code that reads it, re-exported so `visplay.config` names the whole tree.
__all__ = [
    "BenchConfig", "Config", "ConfigError", "DEFAULT_JUDGE_KEY_ENV", "DTYPES", "EMBEDDED_MODELS", "EvalConfig",
    "EvolveConfig", "GRPOPhase", "HardwareConfig", "JudgeConfig", "PAPER_MAX_PIXELS", "PAPER_MIN_PIXELS",
    "PRESETS_DIR", "REPLAY_START", "WORLD_SEED_SCENES", "REPO_ROOT", "ROLE_REWARDS", "SAMPLER_BACKENDS", "Sampling", "SamplerConfig",
    "SelfTrainConfig", "SFTPhase", "VLLM_LAUNCH", "VLLM_MODES", "VLLM_URL", "ArchConfig", "PretrainConfig", "WorldConfig",
    "base_url", "canonical_key", "config_from_manifest", "from_dict", "load_config", "require", "resolve_model",
    "to_dict",
]

PRESETS_DIR = REPO_ROOT / "presets"
#: Names that resolve to models shipped in this repository.
EMBEDDED_MODELS = {name: REPO_ROOT / "models" / name for name in ("tiny", "walk-random", "tiny-rows", "tiny-rows-reversed")}


DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Config:
    model: str = "tiny"  # embedded name, local directory, or HF repo id already in the local HF cache
    dtype: str = "float32"  # weights in memory: float32 on CPU; bfloat16 for the GPU presets
    arch: ArchConfig | None = None  # the model's shape, for --dry-run and benchmarks (None: read config.json)
    committee_arch: tuple[ArchConfig | None, ...] = ()  # entry i: evolve.committee[i]'s shape, for --dry-run
    #   (None or absent: its config.json when on disk, else the base model's shape, which the plan says it assumed)
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model must name a model: 'tiny', a local directory or an HF repo id")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        modes.check(self)  # every rule between settings, in one pass (visplay/modes.py)

    @property
    def source_world(self) -> WorldConfig:
        """The world the loop's unlabeled images come from: `world`, with `evolve.source_objects`."""
        lo_hi = self.evolve.source_objects
        if lo_hi is None:
            return self.world
        return dataclasses.replace(self.world, min_objects=lo_hi[0], max_objects=lo_hi[1])

    def source_world_at(self, t: int) -> WorldConfig:
        """Ladder step ``t``'s source world (step = iteration, unless `evolve.advance_kept_share`
        holds the ladder: `visplay.evolve.bodies.Context.rung`): with `evolve.ladder`, the one level
        ``min + t - 1`` (capped at max) of `source_objects`; otherwise the whole range."""
        w = self.source_world
        if not self.evolve.ladder:
            return w
        level = min(w.min_objects + t - 1, w.max_objects)
        return dataclasses.replace(w, min_objects=level, max_objects=level)

    def replay_world_at(self, t: int) -> WorldConfig | None:
        """Ladder step ``t``'s replay world (`evolve.replay_images`): the levels below its level,
        down to the `world` section's minimum; None when there is none (or the source is not the world)."""
        level = self.source_world_at(t).min_objects
        if not (self.evolve.replay_images and self.evolve.ladder and self.evolve.source.startswith("world")) \
                or level <= self.world.min_objects:
            return None
        return dataclasses.replace(self.world, min_objects=self.world.min_objects, max_objects=level - 1)

    def scene_world(self, t: int, index: int) -> WorldConfig:
        """The world config that drew scene ``index`` of ladder step ``t``'s images (replay scenes live
        at indices from `REPLAY_START` on, so an image id alone says which)."""
        replay = self.replay_world_at(t) if index >= REPLAY_START else None
        return replay or self.source_world_at(t)

    @property
    def labelled_levels(self) -> tuple[int, ...]:
        """Levels (objects per scene) the embedded base saw labels for: the `pretrain.world` range."""
        w = self.pretrain.world
        return tuple(range(w.min_objects, w.max_objects + 1))


def resolve_model(name_or_path: str) -> Path:
    """An embedded name, an existing local path, a run directory (its final reasoner), or an HF repo
    id found in the local HF cache (never downloaded: `local_files_only`). Anything else comes back
    as a path, which `visplay.models.check_model_dir` then reports as missing."""
    if name_or_path in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name_or_path]
    path = Path(name_or_path).expanduser()
    if (path / "manifest.json").is_file() and not (path / "config.json").is_file():
        return final_model(path) or path
    if path.exists() or name_or_path.count("/") != 1 or name_or_path.startswith((".", "/", "~")):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 -- not cached (or not a repo id): report the path as missing
        return path


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `--set evolve.report_to=wandb`: a list of one
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value, where) if len(options) == 1 else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


#: TRL / transformers names accepted for the same knob (TRL users type these): section class -> {alias: field}.
TRL_ALIASES: dict[str, dict[str, str]] = {
    "GRPOPhase": {"learning_rate": "lr", "max_steps": "steps",
                  "per_device_train_batch_size": "per_device_batch"},
    "PretrainConfig": {"learning_rate": "lr", "max_steps": "steps", "per_device_train_batch_size": "batch_size"},
}


def canonical_key(key: str) -> str:
    """A dotted override key with a TRL-style last part renamed (``evolve.reasoner.learning_rate`` ->
    ``evolve.reasoner.lr``), so that an override replaces the preset's value instead of clashing."""
    *path, last = key.split(".")
    cls: Any = Config
    for part in path:  # the section's dataclass, by walking the config tree's type hints
        tp = typing.get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
        if tp is None:
            return key
        cls = next((a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)), None)
        if cls is None:
            return key
    return ".".join([*path, TRL_ALIASES.get(getattr(cls, "__name__", ""), {}).get(last, last)])


def _unalias(cls: type, data: dict, where: str) -> dict:
    """Rename TRL-style keys to the field they mean; both spellings at once is an error."""
    aliases = TRL_ALIASES.get(cls.__name__, {})
    out = dict(data)
    for alias, field_name in aliases.items():
        if alias in out and alias != field_name:
            if field_name in out:
                raise ConfigError(f"{where}: {alias!r} and {field_name!r} name the same setting; give one")
            out[field_name] = out.pop(alias)
    return out


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    data = _unalias(cls, data, where)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
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


def config_from_manifest(data: dict, where: str = "manifest.json") -> Config:
    """The config a run was started with (its manifest's ``config``), read by today's dataclasses:
    keys added since take their defaults, and keys of runs made before the config tree was unified
    are moved: the loop's eval was ``evolve.eval``; a ``sampler.url`` implied a server; the embedded
    model's shape (never read by the loop) had its own key names."""
    data = json.loads(json.dumps(data))  # a private copy
    evolve, sampler, pretrain = data.get("evolve") or {}, data.get("sampler") or {}, data.get("pretrain") or {}
    if "layers" in (pretrain.get("model") or {}):
        pretrain.pop("model")
    for key in ("accelerate_config", "strategy"):  # were only shown; the launcher's config file says them
        (data.get("hardware") or {}).pop(key, None)
    if "eval" in evolve:
        data["eval"] = evolve.pop("eval")
    if "backend" not in sampler and sampler.get("url"):
        sampler["backend"] = "openai"
    return from_dict(Config, data, where)


def load_config(preset: str | Path | None = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the preset (a name in presets/ or a YAML path), then ``key=value`` overrides."""
    data: dict = {}
    where = "defaults"
    if preset is not None:
        data, path = read_preset(preset)
        where = str(path)
    apply_overrides(data, overrides)
    cfg = from_dict(Config, data, f"{where} + overrides" if overrides else where)
    # a --set knob the chosen modes never read is an error, not ignored
    modes.check_overrides(cfg, [canonical_key(o.split("=", 1)[0].strip()) for o in overrides])
    return cfg


def read_preset(preset: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict, Path]:
    """A preset's settings (a name in presets/ or a YAML path) and its file. ``extends: NAME`` (a name in
    presets/ or a path beside the preset) starts from that preset and sets only what differs."""
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
    parent = data.pop("extends", None)
    if parent is None:
        return data, path
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(map(str, _seen))}")
    beside = path.parent / str(parent)
    base, _ = read_preset(beside if beside.suffix and beside.is_file() else parent, (*_seen, path.resolve()))
    return _merged(base, data), path


def _merged(base: dict, top: dict) -> dict:
    """``top`` over ``base``, mappings merged key by key (lists and scalars replaced)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Set each ``key=value`` override (a YAML value, dotted key) in the config dict ``data``, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. eval.n=100)")
        key, raw = item.split("=", 1)
        _set_dotted(data, canonical_key(key.strip()), yaml.safe_load(raw))
    return data
