"""Benchmark evaluation on small fixture parquets: grading per answer type, alignment by id, resume.

Fixtures are written to tmp dirs in the collection's layout (world scenes rendered as PNG bytes,
every answer type, a truncated image, nested-brace answers, a null answer, a sharded folder).
Generation goes through a fake Sampler that returns chosen completions (the micro model only
produces garbage); one test runs the real CLI path on the micro model. CPU, offline, seconds.
Run: `pytest -q tests/test_benchmarks.py`.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visplay.answers import Grader
from visplay.eval.benchmarks import Benchmark, BenchmarkError, resolve_benchmarks
from visplay.answers import extract as extract_answer
from visplay.answers import grade
from visplay.answers.grading import grade_free, grade_number, grade_option, grade_yesno
from visplay.cli import main
from visplay.config import BenchConfig
from visplay.eval.run import EvalError, compare_runs, evaluate_benchmarks
from visplay.worlds.scene import make_scene

FAST = BenchConfig(max_new_tokens=8, batch_size=4, min_pixels=None, max_pixels=None, grader_workers=0)


def _png(index: int) -> bytes:
    buf = io.BytesIO()
    make_scene("heldout", index).render().save(buf, format="PNG")
    return buf.getvalue()


def _boxed(x: str) -> str:
    return f"<think>looking</think> \\boxed{{{x}}}"


# (benchmark, problem, answer, completion, expected verdict; None = skipped) + extra columns
ROWS = {
    "mmmu": [
        dict(id="mmmu-1", problem="Which shape is drawn? <image 1> <image 2>", answer="B",
             options="['circle', 'square', 'triangle']", n_images=2, completion=_boxed("B"), expect=True),
        dict(id="mmmu-2", problem="How many objects are there in total?", answer="3", options=None,
             completion=_boxed("3.0"), expect=True),
        dict(id="mmmu-3", problem="Which colour dominates?", answer="A", options="['red', 'blue']",
             completion=_boxed("blue"), expect=False),
    ],
    "mm-vet": [
        dict(problem="Describe the top-left object.", answer="red<AND>circle", category="rec",
             completion=_boxed("a red circle"), expect=True),
        dict(problem="How many squares?", answer="4<OR>four", category="math", completion=_boxed("five"), expect=False),
    ],
    "realworldqa": [
        dict(problem="Which way does the road turn? A. left B. right C. straight", answer="C", completion=_boxed("(C)"),
             expect=True),
        dict(problem="Is the car parked? A. yes B. no", answer="A", corrupt=True, completion=_boxed("A"), expect=None),
        dict(problem="What is on the sign? A. stop B. yield", answer="A", completion="I think it is A", expect=False),
    ],
    "visnumbench": [
        dict(problem="Estimate the count. A. 3 B. 12 C. 40", answer="B", completion=_boxed("B. 12"), expect=True),
    ],
    "mathverse": [  # written as a sharded folder: mathverse/data/test-0000{0,1}-of-00002.parquet
        dict(problem="What fraction of the grid is filled?", answer="\\frac{1}{2}", completion=_boxed("0.5"),
             expect=True),
        dict(problem="Find the diagonal of the unit square.", answer="\\sqrt{2}", completion=_boxed("\\sqrt{3}"),
             expect=False),
    ],
    "mathvision": [
        dict(problem="Compute sin(60 degrees).", answer="\\frac{\\sqrt{3}}{2}",
             completion=_boxed("\\frac{\\sqrt{3}}{2}"), expect=True),
        dict(problem="Which figure comes next? A. 1 B. 2 C. 3 D. 4", answer="D", completion=_boxed("\\text{D}"),
             expect=True),
        dict(problem="A row without an answer.", answer=None, completion=_boxed("1"), expect=None),
    ],
    "hallusionbench": [
        dict(problem="Is there a red object?", answer="yes", completion=_boxed("Yes"), expect=True),
        dict(problem="Is the image upside down?", answer="0", completion=_boxed("yes, it is"), expect=False),
    ],
}


def _table(rows: list[dict], with_id: bool, start: int) -> pa.Table:
    cols: dict[str, list] = {"problem": [], "answer": [], "images": []}
    for k in ("id", "options", "category"):
        if any(k in r for r in rows) and (k != "id" or with_id):
            cols[k] = []
    for i, r in enumerate(rows):
        imgs = [_png(start + i + j) for j in range(r.get("n_images", 1))]
        if r.get("corrupt"):
            imgs = [imgs[0][: len(imgs[0]) // 2]]
        cols["problem"].append(r["problem"])
        cols["answer"].append(r["answer"])
        cols["images"].append([{"bytes": b, "path": None} for b in imgs])
        for k in ("id", "options", "category"):
            if k in cols:
                cols[k].append(r.get(k))
    return pa.table(cols)


def write_fixture(root):
    """Every benchmark of ROWS under ``root`` (mathverse sharded in a folder)."""
    root.mkdir(parents=True, exist_ok=True)
    for n, (name, rows) in enumerate(ROWS.items()):
        if name == "mathverse":
            (root / name / "data").mkdir(parents=True, exist_ok=True)
            for s, part in enumerate((rows[:1], rows[1:])):
                pq.write_table(_table(part, False, 100 * n + s), root / name / "data" / f"test-0000{s}-of-00002.parquet")
        else:
            pq.write_table(_table(rows, name == "mmmu", 100 * n), root / f"{name}.parquet")


class FakeSampler:
    """Returns the chosen completion for each prompt (found by its problem text); records the calls."""

    def __init__(self, completions: dict[str, str], fail_on: str | None = None):
        self.completions, self.fail_on = completions, fail_on
        self.calls: list[list[tuple[str, int, int]]] = []  # per call: (question text, image slots, images)

    def generate(self, prompts, params):
        assert params.greedy and params.n == 1
        batch = []
        for p in prompts:
            content = p.messages[0]["content"]
            text = content[0]["text"]
            batch.append((text, sum(c["type"] == "image" for c in content), len(p.images)))
        self.calls.append(batch)
        if self.fail_on and any(self.fail_on in t for t, _, _ in batch):
            raise RuntimeError("boom")
        return [[next(v for k, v in self.completions.items() if text.startswith(k))] for text, _, _ in batch]

    @property
    def asked(self) -> list[str]:
        return [t for call in self.calls for t, _, _ in call]


class NoSampler:
    def generate(self, prompts, params):  # pragma: no cover - must never run
        raise AssertionError("generation started although the input was bad")


def _digest(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "data"
    write_fixture(root)
    return root


@pytest.fixture(scope="module")
def completions():
    return {r["problem"]: r["completion"] for rows in ROWS.values() for r in rows}


# ---------------------------------------------------------------- grading, by hand


def test_extract_takes_last_box_with_nested_braces():
    assert extract_answer("\\boxed{1} then \\boxed{\\frac{\\sqrt{3}}{2}}").answer == "\\frac{\\sqrt{3}}{2}"
    assert extract_answer("\\boxed{ }").reason == "empty_box"
    assert extract_answer("no box, answer B").reason == "no_boxed_answer"
    assert extract_answer(None).answer is None


def test_grade_option_letters_text_and_open_fallback():
    assert grade_option("B", "B").correct and grade_option("(b)", "B").correct
    assert grade_option("B. square", "B").correct and grade_option("Option C", "C").correct
    assert grade_option("square", "B", ["circle", "square"]).correct
    assert grade_option("circle", "B", ["circle", "square"]).reason == "option_mismatch"
    assert grade_option("A red cube", "B").reason == "not_an_option"
    assert grade_option("3.0", "3").correct  # MMMU open question: number fallback
    assert grade_option("the Eiffel tower", "Eiffel Tower").correct  # ... then free text


def test_grade_number_equivalence_and_letters():
    with Grader(workers=0) as g:
        assert grade_number("0.5", "\\frac{1}{2}", g).correct
        assert grade_number("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", g).reason == "equivalent:equal"
        assert not grade_number("\\sqrt{3}", "\\sqrt{2}", g).correct
        assert not grade_number("12", "2", g).correct
        assert grade_number("(D)", "D", g).correct  # multiple-choice item in a math benchmark


def test_grade_yesno_and_free_text():
    assert grade_yesno("Yes, there is.", "yes").correct and grade_yesno("no", "0").correct
    assert grade_yesno("True", "1").correct and not grade_yesno("yes", "no").correct
    assert grade_yesno("maybe", "yes").reason == "not_yes_no"
    assert grade_yesno("yes", "A").reason == "reference_not_yes_no"
    assert grade_free("A red circle.", "red<AND>circle").correct
    assert not grade_free("a red square", "red<AND>circle").correct
    assert grade_free("four", "4<OR>four").correct and grade_free("4.0", "4<OR>four").correct
    assert not grade_free("14", "4").correct
    assert grade(None, "A", "option").reason == "no_boxed_answer"
    with pytest.raises(ValueError, match="unknown question type"):
        grade("x", "y", "essay")


# ---------------------------------------------------------------- registry and bad input


def test_registry_names_all_and_import_paths(tmp_path):
    assert [b.name for b in resolve_benchmarks("all")] == list(ROWS)
    assert {b.name: b.answer_type for b in resolve_benchmarks("all,world")}["world"] == "world"
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mmmmu'.*known: mmmu"):
        resolve_benchmarks("mmmu,mmmmu")
    plugin = tmp_path / "mybench.py"
    plugin.write_text("from visplay.eval.benchmarks import Benchmark\nCHART = Benchmark('chartqa', 'number', judged=True)\n")
    (b,) = resolve_benchmarks(f"{plugin}:CHART")
    assert (b.name, b.answer_type, b.judged) == ("chartqa", "number", True)
    with pytest.raises(BenchmarkError, match="cannot import"):
        resolve_benchmarks(f"{plugin}:NOPE")
    with pytest.raises(BenchmarkError, match="answer_type 'essay'"):
        Benchmark("x", "essay")


def _bad(tmp_path, name, table=None, raw=None):
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    if table is not None:
        pq.write_table(table, d / f"{name}.parquet")
    if raw is not None:
        (d / f"{name}.parquet").write_bytes(raw)
    return d


@pytest.mark.parametrize("case,match", [
    ("missing_column", "lacks column.*answer"),
    ("no_images", "lacks column.*images"),
    ("empty_file", "empty"),
    ("zero_rows", "has no rows"),
    ("not_parquet", "not a readable parquet"),
    ("absent", "neither .*hallusionbench.parquet"),
    ("duplicate_ids", "duplicate ids"),
])
def test_bad_input_fails_before_generation(tmp_path, case, match):
    img = [[{"bytes": _png(0), "path": None}]]
    tables = {
        "missing_column": pa.table({"problem": ["q"], "images": img}),
        "no_images": pa.table({"problem": ["q"], "answer": ["yes"]}),
        "zero_rows": pa.table({"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string()),
                               "images": pa.array([], pa.list_(pa.binary()))}),
        "duplicate_ids": pa.table({"id": ["a", "a"], "problem": ["q", "r"], "answer": ["yes", "no"], "images": img * 2}),
    }
    raw = {"empty_file": b"", "not_parquet": b"this is not parquet"}.get(case)
    d = _bad(tmp_path, "hallusionbench", tables.get(case), raw) if case != "absent" else _bad(tmp_path, "other")
    with pytest.raises(BenchmarkError, match=match):
        evaluate_benchmarks(resolve_benchmarks("hallusionbench"), d, tmp_path / "out", NoSampler(), FAST)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- end to end with a fake sampler


def test_end_to_end_grades_every_type_and_aligns_by_id(data_dir, completions, tmp_path):
    before = _digest(data_dir)
    sampler = FakeSampler(completions)
    result = evaluate_benchmarks(resolve_benchmarks("all"), data_dir, tmp_path / "run", sampler, FAST, model_id="fake")
    assert _digest(data_dir) == before  # inputs untouched

    rows = {(r["benchmark"], r["question"].split("\n")[0]): r for r in result.rows if r["question"]}
    for name, specs in ROWS.items():
        for spec in specs:
            row = rows[(name, spec["problem"])] if spec["answer"] is not None else next(
                r for r in result.rows if r["benchmark"] == name and r["skip_reason"] == "missing_answer")
            if spec["expect"] is None:
                assert row["status"] == "skipped", row
                continue
            assert row["status"] == "scored" and row["prediction"] == spec["completion"], row  # aligned by id
            assert row["correct"] is spec["expect"], (name, spec["problem"], row["rule_reason"])

    # the truncated image is skipped with its reason; the rows around it keep their own answers
    rwq = [r for r in result.rows if r["benchmark"] == "realworldqa"]
    assert [r["status"] for r in rwq] == ["scored", "skipped", "scored"]
    assert rwq[1]["skip_reason"] == "image_truncated" and rwq[1]["prediction"] is None
    assert rwq[2]["rule_reason"] == "no_boxed_answer"
    assert not any("Is the car parked" in q for q in sampler.asked)
    assert ("Which shape is drawn? <image 1> <image 2>" in sampler.asked[0]) and sampler.calls[0][0][1:] == (2, 2)
    mmmu3 = rows[("mmmu", "Which colour dominates?")]
    assert "Options:\nA. red\nB. blue" in mmmu3["question"] and mmmu3["rule_reason"] == "option_mismatch"
    assert rows[("mmmu", "Which shape is drawn? <image 1> <image 2>")]["id"] == "mmmu-1"
    assert rows[("mathverse", "Find the diagonal of the unit square.")]["id"] == "mathverse/test-00001-of-00002:0"

    s = result.summary["benchmarks"]
    assert s["realworldqa"]["skipped"] == {"image_truncated": 1} and s["realworldqa"]["accuracy"] == 0.5
    assert s["realworldqa"]["rule_reasons"] == {"no_boxed_answer": 1, "option_match": 1}
    assert s["mathvision"]["skipped"] == {"missing_answer": 1} and s["mathvision"]["accuracy"] == 1.0
    assert s["mm-vet"]["by_category"] == {"math": {"n": 1, "accuracy": 0.0}, "rec": {"n": 1, "accuracy": 1.0}}
    expected = [s[n]["accuracy"] for n in ROWS]
    assert result.summary["average"]["accuracy"] == pytest.approx(sum(expected) / len(expected))
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| rule-based | 66.7 | 50.0 | 50.0 | 100.0 | 50.0 | 100.0 | 50.0 |" in md
    assert "RealWorldQA: image_truncated × 1" in md
    items = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    assert len(items) == sum(len(v) for v in ROWS.values()) and all("prediction" in r for r in items)


def test_two_runs_give_identical_tables(data_dir, completions, tmp_path):
    for run in ("a", "b"):
        evaluate_benchmarks(resolve_benchmarks("mmmu,hallusionbench,world"), data_dir, tmp_path / run,
                            FakeSampler({**completions, "": _boxed("3")}), FAST, model_id="fake")
    for name in ("summary.md", "summary.json", "items.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_resume_generates_only_what_is_missing(data_dir, completions, tmp_path):
    benches = resolve_benchmarks("mm-vet,hallusionbench")
    settings = BenchConfig(max_new_tokens=8, batch_size=1, min_pixels=None, max_pixels=None, grader_workers=0)
    crashing = FakeSampler(completions, fail_on="Is the image upside down?")  # the 4th item crashes the run
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_benchmarks(benches, data_dir, tmp_path / "run", crashing, settings, model_id="fake")
    resumed = FakeSampler(completions)
    result = evaluate_benchmarks(benches, data_dir, tmp_path / "run", resumed, settings, model_id="fake")
    assert len(resumed.asked) == 1 and resumed.asked[0].startswith("Is the image upside down?")
    assert result.summary["benchmarks"]["hallusionbench"]["n_scored"] == 2
    # another model (fingerprint) never reuses these completions
    other = FakeSampler(completions)
    evaluate_benchmarks(benches, data_dir, tmp_path / "run", other, settings, model_id="other-model")
    assert len(other.asked) == 4


def test_rerun_with_only_undecodable_items_left_loads_no_model(data_dir, completions, tmp_path):
    benches = resolve_benchmarks("realworldqa")
    first = evaluate_benchmarks(benches, data_dir, tmp_path / "run", FakeSampler(completions), FAST, model_id="fake")

    def factory():
        raise AssertionError("the model was loaded although nothing could be generated")

    again = evaluate_benchmarks(benches, data_dir, tmp_path / "run", factory, FAST, model_id="fake")
    assert again.summary == first.summary and again.summary["benchmarks"]["realworldqa"]["n_skipped"] == 1


def test_one_failing_item_is_skipped_not_the_batch(data_dir, completions, tmp_path):
    class Picky(FakeSampler):
        def generate(self, prompts, params):
            if any("Is there a red object?" in p.messages[0]["content"][0]["text"] for p in prompts):
                raise ValueError("processor rejected this image")
            return super().generate(prompts, params)

    result = evaluate_benchmarks(resolve_benchmarks("hallusionbench"), data_dir, tmp_path / "run", Picky(completions),
                                 FAST, model_id="fake")
    assert [r["skip_reason"] for r in result.rows] == ["generation_error", None]
    assert result.summary["benchmarks"]["hallusionbench"]["n_scored"] == 1


def test_sampler_returning_wrong_count_is_an_error(data_dir, tmp_path):
    class Short:
        def generate(self, prompts, params):
            return [["\\boxed{yes}"]] * (len(prompts) - 1)

    with pytest.raises(EvalError, match="returned 1 result"):
        evaluate_benchmarks(resolve_benchmarks("hallusionbench"), data_dir, tmp_path / "run", Short(), FAST)


def test_world_entry_in_the_same_table(tmp_path):
    from visplay.eval.benchmarks import with_options

    (world,) = resolve_benchmarks("world")
    world = with_options(world, n=3)
    items = world.load(None).items

    class Oracle:
        def generate(self, prompts, params):
            truth = {i.problem: i.answer for i in items}
            return [[_boxed(truth[p.messages[0]["content"][0]["text"].split(" Reason in")[0]])] for p in prompts]

    result = evaluate_benchmarks([world], None, tmp_path / "run", Oracle(), FAST)
    s = result.summary
    assert s["benchmarks"]["world"]["accuracy"] == 1.0 and s["average_over"] == [] and s["average"]["accuracy"] is None
    assert "| World |" in result.markdown


# ---------------------------------------------------------------- the CLI hooks


def test_cli_path_on_the_micro_model(micro_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--model", str(micro_model_dir), "--benchmarks", "hallusionbench,world", "--n", "2",
            "--data-dir", str(data_dir), "--out", str(out), "--max-new-tokens", "4",
            "--min-pixels", "3136", "--max-pixels", "50176", "--grader-workers", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| rule-based |" in printed and "HallusionBench" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["world"]["n_items"] == 2 and summary["benchmarks"]["hallusionbench"]["n_scored"] == 2
    # a rerun finds every completion cached: no model load, same table
    assert main(argv) == 0
    assert "to generate" not in capsys.readouterr().err

    assert main(["eval", "--compare", str(out), str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| run | HallusionBench | World | Average |") and table.count(str(out)) == 2


def test_cli_errors_are_one_clear_line(micro_model_dir, data_dir, tmp_path, capsys):
    cases = [
        (["--benchmarks", "mmmu,nope", "--data-dir", str(data_dir), "--out", str(tmp_path / "o")], "unknown benchmark 'nope'"),
        (["--benchmarks", "mmmu", "--data-dir", str(data_dir)], "--out RUN_DIR is required"),
        (["--benchmarks", "mmmu", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
          "--model", str(micro_model_dir)], "is not a directory"),
        (["--benchmarks", "mmmu", "--data-dir", str(data_dir), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "m")],
         "does not exist"),
        (["--compare", str(tmp_path / "missing")], "no readable summary.json"),
        (["--benchmarks", "mmmu", "--out", str(tmp_path / "o"), "--judge-url", "http://127.0.0.1:9/v1"], "go together"),
    ]
    for argv, message in cases:
        assert main(["eval", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_compare_table_from_stored_summaries(data_dir, completions, tmp_path):
    wrong = {k: _boxed("no") for k in completions}
    evaluate_benchmarks(resolve_benchmarks("hallusionbench,visnumbench"), data_dir, tmp_path / "base",
                        FakeSampler(wrong), FAST, model_id="base")
    evaluate_benchmarks(resolve_benchmarks("hallusionbench,visnumbench"), data_dir, tmp_path / "iter3",
                        FakeSampler(completions), FAST, model_id="iter3")
    table = compare_runs([tmp_path / "base", tmp_path / "iter3"])
    lines = table.splitlines()
    assert lines[0] == "| run | VisNumBench | HallusionBench | Average |"
    assert lines[2] == "| base | 0.0 | 50.0 | 25.0 |" and lines[3] == "| iter3 | 100.0 | 50.0 | 75.0 |"
