"""scripts/make_benchmark_fixtures.py: seven loadable, deterministic fixture benchmarks from world scenes.

The script's main(argv) writes the files into tmp dirs; the benchmark loader reads every one with
the expected rows and answer types; an oracle sampler that answers each reference scores 100 % on
all seven (so every reference is gradable by its benchmark's rule); the same seed gives the same
bytes; existing files are refused unless --force. CPU, offline, a few seconds.
Run: `pytest -q tests/test_benchmark_fixtures.py`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from visplay.eval.benchmarks import PAPER_BENCHMARKS, resolve_benchmarks
from visplay.config import BenchConfig
from visplay.eval.run import evaluate_benchmarks

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_benchmark_fixtures.py"
N = 4


def _load_script():
    spec = importlib.util.spec_from_file_location("make_benchmark_fixtures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixtures = _load_script()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures") / "bench"
    assert fixtures.main([str(root), "--n", str(N)]) == 0
    return root


def test_make_eval_demo_runs_every_fixture_benchmark():
    """`make eval-demo` and the script's advertised one-liner evaluate the benchmarks the script writes."""
    import re
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("eval-demo: setup", 1)[1].split("\n\n", 1)[0]
    wanted = {*PAPER_BENCHMARKS, "world"}
    assert set(re.search(r"--benchmarks (\S+)", recipe).group(1).split(",")) == wanted
    assert set(re.search(r"--benchmarks (\S+)", fixtures.ONE_LINER).group(1).split(",")) == wanted


def test_writes_seven_loadable_files_with_the_right_answer_types(data_dir):
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(f"{n}.parquet" for n in PAPER_BENCHMARKS)
    loaded = {b.name: (b, b.load(data_dir)) for b in resolve_benchmarks("all")}
    for name, (bench, got) in loaded.items():
        assert len(got.items) == N and not got.skipped, name
        for item in got.items:
            assert len(item.images) == 1 and isinstance(item.images[0]["bytes"], bytes)
            img = Image.open(io.BytesIO(item.images[0]["bytes"]))
            assert img.format == "PNG" and img.size == (140, 140)
            question = bench.question(item)
            if bench.answer_type == "option":
                assert re.fullmatch(r"[A-D]", item.answer), (name, item.answer)
                assert f"{item.answer}. " in question  # the options are shown, with the right letter among them
            elif bench.answer_type == "number":
                assert re.fullmatch(r"\d+", item.answer), (name, item.answer)
            elif bench.answer_type == "yesno":
                assert item.answer in ("yes", "no")
            else:
                assert bench.answer_type == "free" and not re.fullmatch(r"[A-E]", item.answer)
    mmmu_bench, mmmu = loaded["mmmu"]
    assert mmmu.items[0].id == "fixture_mmmu_0" and mmmu.items[0].options and "<image 1>" in mmmu.items[0].problem
    assert "\nOptions:\nA. " in mmmu_bench.question(mmmu.items[0])  # options column rendered by the loader
    assert all(i.category for i in loaded["mm-vet"][1].items)
    # all questions differ in their images: no scene is used twice
    images = [i.images[0]["bytes"] for _, got in loaded.values() for i in got.items]
    assert len(set(images)) == len(images)


def test_hallusionbench_existence_questions_match_the_scene():
    rows = fixtures.fixture_rows("hallusionbench", 12, seed=3)
    for i, row in enumerate(rows):
        if row["category"] != "existence":
            continue
        scene = fixtures.make_scene(fixtures.SPLIT, fixtures.INDEX_BASE + 3 * fixtures.PER_SEED
                                    + 6 * fixtures.PER_BENCHMARK + i)
        colour, shape = re.fullmatch(r"Is there an? (\w+) (\w+)\?", row["problem"]).groups()
        assert row["answer"] == ("yes" if any((o.colour, o.shape) == (colour, shape) for o in scene.objects) else "no")
    assert {r["answer"] for r in rows} == {"yes", "no"}


def test_an_oracle_scores_every_reference(data_dir, tmp_path):
    """Answering each reference gives 100 %: every reference is gradable by its benchmark's rule."""
    benches = resolve_benchmarks("all")
    truth = {}
    for b in benches:
        for item in b.load(data_dir).items:
            pixels = Image.open(io.BytesIO(item.images[0]["bytes"])).convert("RGB").tobytes()
            truth[pixels] = item.answer.split("<OR>")[0]

    class Oracle:
        def generate(self, prompts, params):
            return [[f"<think>look</think> \\boxed{{{truth[p.images[0].convert('RGB').tobytes()]}}}"] for p in prompts]

    settings = BenchConfig(max_new_tokens=8, batch_size=8, min_pixels=19600, max_pixels=19600, grader_workers=0)
    result = evaluate_benchmarks(benches, data_dir, tmp_path / "run", Oracle(), settings, model_id="oracle")
    assert {n: s["accuracy"] for n, s in result.summary["benchmarks"].items()} == {n: 1.0 for n in PAPER_BENCHMARKS}


def test_same_seed_same_bytes_other_seed_other_bytes(data_dir, tmp_path):
    assert fixtures.main([str(tmp_path / "again"), "--n", str(N), "--seed", "0"]) == 0
    assert _digests(tmp_path / "again") == _digests(data_dir)
    assert fixtures.main([str(tmp_path / "other"), "--n", str(N), "--seed", "1"]) == 0
    other = _digests(tmp_path / "other")
    assert all(other[k] != v for k, v in _digests(data_dir).items())


def test_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    out = tmp_path / "bench"
    assert fixtures.main([str(out), "--n", "2"]) == 0
    before = _digests(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert fixtures.main([str(out), "--n", "3"]) == 2
    err = capsys.readouterr().err
    assert "mmmu.parquet already exists" in err and "--force" in err and err.count("\n") == 1
    assert _digests(out) == before and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    (out / "mmmu.parquet").unlink()  # one file left over is enough to refuse, and nothing is written
    capsys.readouterr()
    assert fixtures.main([str(out), "--n", "2"]) == 2
    assert "mm-vet.parquet already exists" in capsys.readouterr().err and not (out / "mmmu.parquet").exists()

    assert fixtures.main([str(out), "--n", "2", "--force"]) == 0
    assert _digests(out) == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert fixtures.main([str(tmp_path / "a"), "--n", "0"]) == 2
    assert "--n must be" in capsys.readouterr().err and not (tmp_path / "a").exists()
    (tmp_path / "b" / "mathverse").mkdir(parents=True)
    assert fixtures.main([str(tmp_path / "b"), "--force"]) == 2
    assert "mathverse already exists" in capsys.readouterr().err
