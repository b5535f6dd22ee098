"""The `visplay` CLI: every subcommand's --help, a real eval on a micro model, clear input errors."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from visplay.cli import build_parser, main


def test_help_of_every_subcommand(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) >= {"pretrain", "eval"}
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "--preset" in capsys.readouterr().out


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_eval_writes_items_and_leaves_model_untouched(micro_model_dir, tmp_path, capsys):
    before = _digest(micro_model_dir)
    out = tmp_path / "ev"
    rc = main(["eval", "--model", str(micro_model_dir), "--n", "6", "--k", "3", "--out", str(out),
               "--max-new-tokens", "8", "--temperature", "0.5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "greedy" in text and "maj@k" in text and "ALL" in text
    rows = pq.read_table(out / "items.parquet").to_pylist()
    assert len(rows) == 6 and all(len(r["samples"]) == 3 for r in rows)
    assert {r["id"] for r in rows} == {f"world/heldout/{i}" for i in range(6)}
    assert (out / "summary.json").is_file() and (out / "summary.md").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labelled_levels"] == [1, 2, 3, 4, 5]  # presets/tiny.yaml pretrain.world
    assert sum(v["n"] for v in summary["by_level"].values()) == 6
    assert summary["meta"]["config"]["eval"] | {"temperature": 0.5, "max_new_tokens": 8, "n": 6, "k": 3} == \
        summary["meta"]["config"]["eval"]  # the flags are the config keys they name
    assert set(summary["by_level"]) == {str(r["level"]) for r in rows} and "level " in text
    assert _digest(micro_model_dir) == before


@pytest.mark.parametrize(
    "argv, match",
    [
        (["eval", "--model", "/nonexistent/model"], "does not exist"),
        (["eval", "--set", "eval.bogus=1"], "unknown key"),
        (["eval", "--preset", "nope"], "not found"),
        (["eval", "--split", "train"], "eval.split"),
        (["eval", "--sampling-seed", "3"], "--sampling-seed does not apply: without --benchmarks"),
        (["eval", "--judge-url", "http://127.0.0.1:9/v1", "--limit", "3"], "--limit, --judge-url do not apply"),
        (["eval", "--benchmarks", "world", "--probe"], "--probe does not apply: with --benchmarks"),
        (["eval", "--benchmarks", "world", "--k", "3"], "--k does not apply: with --benchmarks"),
        (["eval", "--compare", "a", "b", "--k", "3"], "--k, --out do not apply: --compare prints"),
        (["eval", "--metric", "rule"], "--metric applies only with --compare"),
        (["eval", "--set", "sampler.backend=openai"], "backend openai needs sampler.url"),
    ],
)
def test_input_errors_exit_2_with_a_clear_message(argv, match, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_model_dir_without_weights(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["eval", "--model", str(tmp_path)]) == 2
    assert "no weights" in capsys.readouterr().err
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    assert main(["eval", "--model", str(tmp_path)]) == 2
    assert "could not load" in capsys.readouterr().err


def test_version_and_config_alias(capsys, tmp_path):
    """`--version` prints the package version; `--config FILE.yaml` is `--preset FILE.yaml`."""
    from visplay import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"visplay {__version__}"
    preset = tmp_path / "mine.yaml"
    preset.write_text("evolve:\n  iterations: 2\n  questioner:\n    lr: 1e-6\n")
    args = build_parser().parse_args(["evolve", "--config", str(preset), "--dry-run"])
    assert args.preset == str(preset)
    assert main(["evolve", "--config", str(preset), "--set", "evolve.report_to=wandb", "--dry-run"]) == 0
    assert main(["evolve", "--config", str(tmp_path / "none.yaml"), "--dry-run"]) == 2
    assert "not found" in capsys.readouterr().err


def test_console_levels_from_evolve_flags(monkeypatch):
    """--quiet turns every bar off, --verbose keeps the per-step dicts; the two exclude each other."""
    from visplay import console
    from visplay.cli import evolve

    seen = []
    monkeypatch.setattr(console, "_level", "normal")
    monkeypatch.setattr(evolve, "config", lambda args, extra: seen.append(console.level()) or (_ for _ in ()).throw(
        ValueError("stop here")))
    for flags, level in (([], "normal"), (["--quiet"], "quiet"), (["--verbose"], "verbose")):
        assert main(["evolve", "--dry-run", *flags]) == 2
        assert seen[-1] == level
    assert console.bar_disable() is None
    console.set_level("quiet")
    assert console.bar_disable() is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evolve", "--quiet", "--verbose"])


def test_console_phase_bar_is_labelled_and_prints_no_dicts(monkeypatch, capsys):
    """A GRPO phase's bar is named for its stage and carries reward/kl/valid; no log dict is
    printed at the normal level (the dict stays in the Trainer's log history), one is at verbose."""
    import io

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from visplay import console
    from visplay.run.stages import stage_at
    from visplay.evolve.grpo import phase_progress

    assert stage_at("runs/x/iter1/questioner.ckpt") == "iter1/questioner"
    monkeypatch.setattr(console, "bar_disable", lambda: False)  # draw even though this is no terminal
    import tqdm.auto

    real, out = tqdm.auto.tqdm, io.StringIO()
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **kw: real(*a, file=out, **kw))
    args, control = TrainingArguments(output_dir="/tmp/unused", report_to=[]), TrainerControl()
    for level in ("normal", "verbose"):
        monkeypatch.setattr(console, "_level", level)
        out.seek(0)
        out.truncate()
        cb, state = phase_progress("iter1/questioner"), TrainerState(max_steps=4)
        cb.on_train_begin(args, state, control)
        for step in range(1, 5):
            state.global_step = step
            cb.on_step_end(args, state, control)
            cb.on_log(args, state, control, logs={"loss": 0.1, "reward": 0.2968, "kl": 0.0031, "questioner/valid": 1.0,
                                                   "clip_ratio/high_max": 0.0})
        cb.on_train_end(args, state, control)
        bar, printed = out.getvalue(), capsys.readouterr()
        assert "iter1/questioner" in bar and "4/4" in bar and "reward 0.297 kl 0.003 valid 1.00" in bar
        assert "clip_ratio" not in bar + printed.err
        assert ("clip_ratio/high_max" in printed.out) == (level == "verbose")
