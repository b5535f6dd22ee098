"""Every `visplay …` command in README.md runs as written, in a form that does not train.

The commands are read from the README's code blocks (a trailing ``\\`` joins lines, ``#`` starts a
comment); its placeholders become small real things: ``M``/``DIR`` the micro model, ``DATA`` a
parquet folder, ``OUT``/``--out`` paths a temporary folder, ``runs/NAME`` a run directory whose
reasoner is the micro model, ``HOST:8000`` a `visplay serve` server of the micro model. Then:

* ``evolve`` runs with ``--dry-run`` (the config, its rules and the plan; nothing trained);
* ``evolve --resume`` and ``serve`` (which would train or block) are parsed, and their config built;
* ``eval``, ``status``, ``report`` run for real, evaluations cut to a few items;
* ``self-train`` and ``pretrain`` run one tiny step into a temporary folder.

So a README command that stops working fails here. Offline: `pytest -q tests/test_readme.py`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visplay.cli import build_parser, main
from visplay.cli.common import config
from visplay.config import REPO_ROOT, load_config, to_dict

README = REPO_ROOT / "README.md"


def readme_commands(text: str) -> list[str]:
    """Every ``visplay`` command line in the README's code blocks, continuation lines joined."""
    out, block, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        line = pending + line.split(" #", 1)[0].strip() if pending else line.split(" #", 1)[0].strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        m = re.match(r"(?:\.venv/bin/)?visplay\s+(.*)", line)
        if m:
            out.append("visplay " + m.group(1).strip())
    return out


@pytest.fixture(scope="module")
def places(micro_model_dir, tmp_path_factory):
    """The things the placeholders stand for."""
    from test_benchmarks import write_fixture

    from visplay.evolve.rows import png_bytes
    from visplay.run.rundir import RunDir
    from visplay.worlds.scene import make_scene

    root = tmp_path_factory.mktemp("readme")
    data = root / "data"
    data.mkdir()
    pq.write_table(pa.table({"images": [png_bytes(make_scene("unlabeled", i).render()) for i in range(3)]}),
                   data / "train.parquet")
    bench = root / "bench"
    write_fixture(bench)
    run = RunDir(root / "runs" / "NAME")
    run.create(to_dict(load_config("tiny")), ["visplay", "evolve"])
    run.mark("iter1/reasoner", "done", model=str(micro_model_dir))
    return {"model": str(micro_model_dir), "data": str(data), "bench": str(bench), "run": str(run.root), "root": root}


def concrete(command: str, places: dict, server: str) -> list[str]:
    """The command's argv with its placeholders made real."""
    argv = shlex.split(command)[1:]
    out: list[str] = []
    for i, arg in enumerate(argv):
        before = argv[i - 1] if i else ""
        if before == "--model" and arg in ("M", "DIR"):
            arg = places["model"]
        elif before == "--data-dir":
            arg = places["bench"]
        elif before == "--out":
            arg = str(places["root"] / "out" / str(i) / Path(arg).name)
        elif arg == "runs/NAME":
            arg = places["run"]
        arg = arg.replace("parquet:DATA", f"parquet:{places['data']}").replace("http://HOST:8000/v1", server)
        out.append(arg)
    return out


def test_commands_are_read_from_code_blocks_with_continuations_joined() -> None:
    text = "visplay prose\n```bash\n.venv/bin/visplay eval --n 5  # note\nmake test\n.venv/bin/visplay evolve \\\n" \
           "    --dry-run   # plan\n```\n"
    assert readme_commands(text) == ["visplay eval --n 5", "visplay evolve --dry-run"]


def test_the_readme_lists_the_commands_it_documents() -> None:
    commands = readme_commands(README.read_text())
    kinds = {shlex.split(c)[1] for c in commands}
    assert {"evolve", "eval", "report", "status", "serve", "self-train", "pretrain"} <= kinds
    assert "visplay evolve" in commands and "visplay evolve --dry-run" in commands


def test_every_readme_command_runs_as_written(places, micro, tmp_path, monkeypatch, capsys) -> None:
    from visplay.sampling.hf import TransformersSampler
    from visplay.sampling.server import SamplerServer

    monkeypatch.chdir(tmp_path)  # nothing a command writes by default lands in the repository
    with SamplerServer(TransformersSampler(*micro), "micro") as server:
        for command in readme_commands(README.read_text()):
            argv = concrete(command, places, server.url)
            kind = argv[0]
            if kind == "evolve" and "--resume" in argv or kind == "serve":
                args = build_parser().parse_args(argv)  # would train or block: the flags parse, the config builds
                if kind == "serve":
                    config(args)
                continue
            if kind == "evolve":
                argv += [] if "--dry-run" in argv else ["--dry-run"]
            elif kind == "eval" and "--benchmarks" in argv:
                argv += ["--limit", "2", "--max-new-tokens", "4", "--grader-workers", "0"]
            elif kind == "eval":
                argv += ["--n", "2", "--k", "1", "--max-new-tokens", "4"]
            elif kind == "self-train":
                argv += ["--n", "6", "--k", "2", "--eval-n", "2", "--set", "self_train.epochs=1",
                         "--set", "self_train.batch_size=2"]
            elif kind == "pretrain":
                argv = [a if a != "models/tiny" else str(tmp_path / "tiny") for a in argv] + ["--steps", "1"]
            assert main(argv) == 0, (command, argv, capsys.readouterr().err)
    assert not (REPO_ROOT / "models" / "tiny" / "checkpoint-1").exists()
