"""The `visplay` CLI: every subcommand's --help, a real eval on a micro model, clear input errors."""

from __future__ import annotations

import hashlib

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
               "--set", "eval.max_new_tokens=8"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "greedy" in text and "maj@k" in text and "ALL" in text
    rows = pq.read_table(out / "items.parquet").to_pylist()
    assert len(rows) == 6 and all(len(r["samples"]) == 3 for r in rows)
    assert {r["id"] for r in rows} == {f"world/heldout/{i}" for i in range(6)}
    assert (out / "summary.json").is_file() and (out / "summary.md").is_file()
    assert _digest(micro_model_dir) == before


@pytest.mark.parametrize(
    "argv, match",
    [
        (["eval", "--model", "/nonexistent/model"], "does not exist"),
        (["eval", "--set", "eval.bogus=1"], "unknown key"),
        (["eval", "--preset", "nope"], "not found"),
        (["eval", "--split", "train"], "eval.split"),
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
