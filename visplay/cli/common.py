"""What every subcommand shares: `--preset/--config` and `--set`, `--model`, and flags that are
shorthands for config keys (a flag is a `--set key=value`, so the config tree stays the one source)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

from visplay.config import Config, load_config


DEFAULT_PRESET = "tiny"


def default_config() -> Config:
    """The default preset, resolved: what the help texts describe (never a fixed string)."""
    return load_config(DEFAULT_PRESET)


def model_default() -> str:
    """The help's note on ``--model``'s default."""
    return f"default: the preset's; {DEFAULT_PRESET}'s is {default_config().model!r}"


def add_common(p: argparse.ArgumentParser, model_help: str | None = "model directory or embedded name") -> None:
    """``--preset``, ``--set`` and (unless ``model_help`` is None) ``--model``, whose help gets the
    default preset's model appended."""
    p.add_argument("--preset", "--config", dest="preset", default=DEFAULT_PRESET,
                   help=f"preset name in presets/ or a YAML file (default: {DEFAULT_PRESET}); --config FILE.yaml is the same")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set eval.k=5 (repeatable)")
    if model_help:
        p.add_argument("--model", help=f"{model_help} ({model_default()})")


def sets(pairs: Iterable[tuple[str, object]]) -> list[str]:
    """``key=value`` overrides for the pairs whose value was given (JSON is YAML, so strings stay strings)."""
    return [f"{key}={json.dumps(value)}" for key, value in pairs if value is not None]


def config(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    """The preset, then `--set`, then the keys of the shorthand flags."""
    return load_config(args.preset, list(args.overrides) + list(extra))


def server_sets(url: str | None) -> list[str]:
    """`--sampler-url URL`: sample through the OpenAI-compatible server there (as it is, unless
    `--set sampler.launch=...` starts one per stage)."""
    return sets([("sampler.backend", "openai"), ("sampler.url", url)]) if url else []


def add_sampler_url(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler-url", help="sample through the OpenAI-compatible server at this base URL "
                   "(sets sampler.backend=openai and sampler.url; docs/scaling.md §8)")


def add_run_dir_parser(sub, name: str, run, note: str) -> argparse.ArgumentParser:
    """A subcommand over one run directory (`report`, `status`): it reads the run's own config, so
    it takes no --preset/--set."""
    p = sub.add_parser(name, help=run.__doc__, description=f"{run.__doc__} {note} The config is the run's own "
                       "(manifest.json), so --preset/--set do not apply.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `visplay evolve`")
    p.set_defaults(func=run)
    return p
