"""`visplay report` on the run directories of a real micro loop: finished, and crashed for real.

The runs come from the session fixture `real_runs` (tests/conftest.py): `visplay evolve` on the
shipped tiny model, two iterations, SIGKILLed in iter2/labels (the `crashed` run) and finished by
`run_evolve(..., resume=True)`; the finished copy here also gets benchmark summaries for the base
model and the final reasoner from the real evaluator (`evaluate_benchmarks`, `world` benchmark).
Reports are written by `write_report` (a section that renders as an error box fails the test) and
parsed with html.parser. Checked: every <img> is a data URI that PIL decodes, the gallery shows
each kind of question the run wrote, every number in the machine-readable tables equals
manifest.json / metrics.jsonl / summary.json / the parquet files (shown with 3 decimals), the
crashed run's report marks what is missing, and the file is written atomically. Edge cases the
run does not produce (a KL spike, a health-guard stop, degenerate questions, damaged files, a
running run) change one thing in a copy of the real run; expected values are read from its files.
When /usr/bin/chromium exists, a headless browser renders the page (screenshot not blank, every
image loaded); otherwise that test is skipped.
Run: `pytest -q tests/test_report.py` (about a minute of CPU, most of it the fixture's loop;
install chromium with `apt-get install -y chromium` for the browser check).
"""

from __future__ import annotations

import base64
import doctest
import io
import json
import math
import re
import shlex
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from statistics import median

import pyarrow.parquet as pq
import pytest
from PIL import Image

import visplay.report.data
from visplay.cli import main as cli_main
from visplay.config import config_from_manifest
from visplay.run.stages import stage_names
from visplay.run.rundir import RunDir
from visplay.report import write_report
from visplay.report.data import GALLERY_SIZE, degenerate, load_run

CHROMIUM = Path("/usr/bin/chromium")
VOID = {"img", "meta", "br", "hr", "input", "link", "source", "wbr"}


# ---------------------------------------------------------------- a minimal DOM over html.parser


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, **attrs) -> list[Node]:
        return [n for n in self.iter() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, **attrs) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag}> with {attrs}"
        return found[0]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(path: Path) -> Node:
    t = Tree()
    t.feed(path.read_text(encoding="utf-8"))
    t.close()
    return t.root


def cells(row: Node) -> dict[str, Node]:
    return {td.attrs["data-key"]: td for td in row.find_all("td") if "data-key" in td.attrs}


def assert_shows(td: Node, expected, close: bool = False) -> None:
    """The cell holds exactly ``expected`` in data-value and shows it with the shared 3-decimal format
    (``close``: a value the report computes itself, equal up to rounding)."""
    if expected is None:
        assert td.attrs["data-value"] == "" and td.text() == "–"
    elif isinstance(expected, float):
        value = float(td.attrs["data-value"])
        assert math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-15) if close else value == expected
        assert td.text() == f"{value:.3f}" and (close or td.text() == f"{expected:.3f}")
    elif isinstance(expected, bool):
        assert td.attrs["data-value"] == str(expected).lower() and td.text() == ("yes" if expected else "no")
    else:
        assert td.attrs["data-value"] == str(expected) and td.text() == str(expected)


# ---------------------------------------------------------------- the run's own files


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def n_iterations(run: Path) -> int:
    return manifest(run)["config"]["evolve"]["iterations"]


def run_path(run: Path, path: str) -> Path:
    """A path the manifest records: relative ones are relative to the run directory."""
    return Path(path) if Path(path).is_absolute() else run / path


def step_logs(run: Path, stage: str) -> list[dict]:
    """The GRPO step lines of ``stage`` in metrics.jsonl (the ones with a reward), in step order."""
    steps = [r for r in metrics(run) if r.get("stage") == stage and "reward" in r and "step" in r]
    assert len({r["step"] for r in steps}) == len(steps), f"{stage}: a step logged twice"
    return sorted(steps, key=lambda r: r["step"])


def rows(run: Path, t: int) -> list[dict]:
    """What the gallery of iteration t shows: labels.parquet, or questions.parquet before labeling."""
    labels = run / f"iter{t}" / "labels.parquet"
    return pq.read_table(labels if labels.is_file() else run / f"iter{t}" / "questions.parquet").to_pylist()


def card_kind(row: dict) -> str:
    return "invalid" if not row["valid"] else "kept" if row.get("kept") else "outside"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def report(run: Path, out: Path | None = None) -> Path:
    """``write_report``; a section that failed to render (an error box in the page) fails the test."""
    path = write_report(run, out)
    html = path.read_text(encoding="utf-8")
    failed = re.findall(r'data-section-error="([^"]*)">([^<]*)', html)
    assert not failed, f"report sections failed to render: {failed}"
    return path


def bench(run: Path, t: int) -> Path:
    """RUN/iter<t>/bench/summary.json from the real benchmark evaluator: the `world` benchmark (the
    run's world and eval families, 8 held-out items) on iteration t's reasoner (t = 0: the base)."""
    from visplay.config import Config, from_dict, resolve_model
    from visplay.eval.benchmarks import resolve_benchmarks, with_options
    from visplay.config import BenchConfig
    from visplay.eval.run import evaluate_benchmarks
    from visplay.models import load_model
    from visplay.sampling.hf import TransformersSampler

    m = manifest(run)
    cfg = from_dict(Config, m["config"], str(run / "manifest.json"))
    model = resolve_model(cfg.model) if t == 0 else run_path(run, m["stages"][f"iter{t}/reasoner"]["model"])
    world = [with_options(b, n=8, seed=cfg.eval.seed, split=cfg.eval.split, world=cfg.world,
                          families=tuple(cfg.eval.families)) for b in resolve_benchmarks("world")]
    out = run / f"iter{t}" / "bench"
    evaluate_benchmarks(world, None, out, lambda: TransformersSampler(*load_model(model)),
                        BenchConfig(max_new_tokens=64, batch_size=8, grader_workers=0), model_id=str(model),
                        progress=lambda message: None)
    return out / "summary.json"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished(real_runs, tmp_path_factory):
    run = copy_run(real_runs.finished, tmp_path_factory.mktemp("report") / "finished")
    for t in (0, n_iterations(run)):
        bench(run, t)
    return run, report(run)


@pytest.fixture(scope="module")
def crashed(real_runs, tmp_path_factory):
    run = copy_run(real_runs.crashed, tmp_path_factory.mktemp("report") / "crashed")
    return run, report(run)


# ---------------------------------------------------------------- the finished run


def test_default_path_atomic_and_self_contained(finished):
    run, out = finished
    assert out == run / "report.html"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    doc = parse(out)
    assert not doc.find_all("link")  # no stylesheet links
    for node in doc.iter():
        for key in ("src", "href"):
            value = node.attrs.get(key)
            assert value is None or value.startswith("data:"), f"<{node.tag} {key}={value[:40]!r}> loads from outside"
    assert not [n for n in doc.iter() if "error" in n.classes()] and "data-section-error" not in out.read_text()
    assert not load_run(run).problems  # the real run's files all read


def test_every_img_is_a_data_uri_that_decodes(finished, crashed):
    for _, out in (finished, crashed):
        doc = parse(out)
        imgs = doc.find_all("img")
        thumbs = [i for i in imgs if "thumb" in i.classes()]
        assert len(thumbs) == len([c for c in doc.find_all("figure") if "card" in c.classes()]) > 0
        assert len([i for i in imgs if "plot" in i.classes()]) >= 5  # accuracy, families, curves, types, agreement
        for node in imgs:
            head, _, payload = node.attrs["src"].partition(",")
            assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head
            image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
            image.load()
            assert image.width > 0 and image.height > 0


def test_gallery_has_thumbnails_with_question_label_and_agreement(finished):
    run, out = finished
    doc = parse(out)
    kinds = set()
    for t in range(1, n_iterations(run) + 1):
        labels = rows(run, t)
        gallery = doc.find("div", id=f"gallery-{t}")
        cards = gallery.find_all("figure")
        assert len(cards) == min(GALLERY_SIZE, len(labels))
        assert len(gallery.find_all("img")) == len(cards)
        shown = {card_kind(labels[int(c.attrs["data-row"])]) for c in cards}
        assert shown == {card_kind(r) for r in labels}  # every kind of question the iteration wrote is shown
        kinds |= shown
        for card in cards:
            row = labels[int(card.attrs["data-row"])]
            assert card_kind(row) in card.classes() and row["image_id"] in card.text()
            if row["valid"]:
                assert row["question"] in card.text() and str(row["questioner_answer"]) in card.text()
                assert (row["true_answer"] if row["true_answer"] is not None else "unknown") in card.text()
            else:
                assert row["reason"] in card.text()
            if row["label"] is not None:
                assert float(card.attrs["data-agreement"]) == row["agreement"]
                assert f"c = {row['agreement']:.3f}" in card.text() and str(row["label"]) in card.text()
            elif row["valid"]:
                assert row["skip_reason"] in card.text()
    # the fixture's run is sized to write all three kinds; if it stops doing so, this test checks less
    assert {"kept", "outside", "invalid"} <= kinds


def test_accuracy_table_equals_manifest(finished):
    run, out = finished
    stages = manifest(run)["stages"]
    n = n_iterations(run)
    rows_ = [r for r in parse(out).find("table", id="accuracy").find_all("tr") if "data-stage" in r.attrs]
    assert [r.attrs["data-stage"] for r in rows_] == [f"iter{t}/eval" for t in range(n + 1)]
    for r in rows_:
        info, c = stages[r.attrs["data-stage"]], cells(r)
        for key in ("greedy", "maj", "pass", "n"):
            assert_shows(c[key], info[key])
    assert_shows(cells(rows_[0])["gain"], None)
    for t in range(1, n + 1):
        gain = cells(rows_[t])["gain"]
        assert float(gain.attrs["data-value"]) == stages[f"iter{t}/eval"]["greedy"] - stages["iter0/eval"]["greedy"]


def test_family_benchmark_and_label_tables_equal_their_sources(finished):
    run, out = finished
    doc = parse(out)
    n = n_iterations(run)
    for t in range(n + 1):
        summary = json.loads((run / f"iter{t}" / "eval" / "summary.json").read_text())
        assert summary["by_family"]
        for fam, s in summary["by_family"].items():
            row = doc.find("table", id="accuracy-by-family").find("tr", data_family=fam)
            tds = [td for td in row.find_all("td") if td.attrs.get("data-iter") == str(t)]
            assert [td.attrs["data-key"] for td in tds] == ["greedy", "maj"]
            assert_shows(tds[0], s["greedy"])
            assert_shows(tds[1], s["maj"])
            if t == 0:
                assert_shows(cells(row)["n"], s["n"])
                assert_shows(cells(row)["prior"], s["prior"])
    table = doc.find("table", id="benchmarks")
    assert [r.attrs["data-iter"] for r in table.find_all("tr") if "data-iter" in r.attrs] == ["0", str(n)]
    for t in (0, n):
        summary = json.loads((run / f"iter{t}" / "bench" / "summary.json").read_text())
        row = table.find("tr", data_iter=str(t))
        tds = row.find_all("td", data_key="accuracy")
        assert [td.attrs["data-benchmark"] for td in tds] == summary["order"] == ["world"]
        for td in tds:
            assert_shows(td, summary["benchmarks"][td.attrs["data-benchmark"]]["accuracy"])
        assert_shows(cells(row)["average"], summary["average"]["accuracy"])  # world is not averaged: none
    stages = manifest(run)["stages"]
    table = doc.find("table", id="label-accuracy")
    for t in range(1, n + 1):
        c = cells(table.find("tr", data_iter=str(t)))
        for key in ("n_labeled", "n_kept", "n_with_truth", "label_accuracy", "label_accuracy_kept",
                    "questioner_answer_accuracy", "mean_agreement"):
            assert_shows(c[key], stages[f"iter{t}/labels"][key])
        by_rule = stages[f"iter{t}/labels"]["by_rule"]  # which rule made the round's labels, and how many it kept
        assert by_rule and sum(n["labeled"] for n in by_rule.values()) == stages[f"iter{t}/labels"]["n_labeled"]
        assert table.find("tr", data_iter=str(t)).find_all("td")[1].text() == "; ".join(
            f"{rule}: {n['labeled']} labelled, {n['kept']} kept" for rule, n in by_rule.items())


def test_level_panel_equals_eval_summaries_and_labels_stage(finished):
    """The ladder panel: greedy and complete listings per level per iteration (eval summaries), the
    kept share and kept-label accuracy per level (labels stage info); the held-out note names k."""
    run, out = finished
    doc = parse(out)
    k = manifest(run)["config"]["eval"]["k"]
    html = out.read_text()
    assert f"{k} samples for maj/pass" in html and "? samples" not in html
    table = doc.find("table", id="accuracy-by-level")
    for t in range(n_iterations(run) + 1):
        summary = json.loads((run / f"iter{t}" / "eval" / "summary.json").read_text())
        assert summary["by_level"]
        for lv, s in summary["by_level"].items():
            tds = [td for td in table.find("tr", data_level=lv).find_all("td") if td.attrs.get("data-iter") == str(t)]
            assert [td.attrs["data-key"] for td in tds] == ["greedy", "listing"]
            assert_shows(tds[0], s["greedy"])
            assert_shows(tds[1], s["listing_complete"])
    kept = doc.find("table", id="kept-by-level")
    for t in range(1, n_iterations(run) + 1):
        for lv, m in manifest(run)["stages"][f"iter{t}/labels"]["by_level"].items():
            c = cells(kept.find("tr", data_iter=str(t), data_level=lv))
            assert_shows(c["kept"], m["kept"])
            assert_shows(c["kept_accuracy"], m["kept_accuracy"])


def test_step_tables_equal_metrics_jsonl(finished):
    run, out = finished
    doc = parse(out)
    ev = manifest(run)["config"]["evolve"]
    for t in range(1, n_iterations(run) + 1):
        for role in ("questioner", "reasoner"):
            steps = step_logs(run, f"iter{t}/{role}")
            assert [r["step"] for r in steps] == list(range(1, ev[role]["steps"] + 1))
            rows_ = [r for r in doc.find("table", id=f"{role}-steps-{t}").find_all("tr") if "data-step" in r.attrs]
            assert [int(r.attrs["data-step"]) for r in rows_] == [r["step"] for r in steps]
            for r, rec in zip(rows_, steps):
                shown = cells(r)
                assert {"reward", "kl", "entropy", f"{role}/{'valid' if role == 'questioner' else 'accuracy'}"} \
                    <= set(shown)
                for key, td in shown.items():
                    assert_shows(td, rec.get(key))


def test_qtype_agreement_and_skipped_tables(finished):
    run, out = finished
    doc = parse(out)
    m = manifest(run)
    stages = m["stages"]
    for t in range(1, n_iterations(run) + 1):
        questions = pq.read_table(run / f"iter{t}" / "questions.parquet").to_pylist()
        c = cells(doc.find("table", id="qtype-mix").find("tr", data_iter=str(t)))
        assert_shows(c["total"], len(questions))
        assert_shows(c["invalid"], sum(not q["valid"] for q in questions))
        for qtype in {q["qtype"] for q in questions if q["valid"]}:
            assert_shows(c[qtype], sum(q["valid"] and q["qtype"] == qtype for q in questions))
        labels = [r for r in pq.read_table(run / f"iter{t}" / "labels.parquet").to_pylist() if r["label"] is not None]
        row = doc.find("table", id="agreement").find("tr", data_iter=str(t))
        shown = {float(td.attrs["data-c"]): int(td.attrs["data-value"]) for td in row.find_all("td") if "data-c" in td.attrs}
        assert sum(shown.values()) == len(labels)
        assert_shows(cells(row)["labeled"], len(labels))
        for value, count in shown.items():
            assert count == sum(math.isclose(r["agreement"], value) for r in labels)
        assert_shows(cells(row)["in_band"], stages[f"iter{t}/labels"]["n_kept"])
        low, high = config_from_manifest(m["config"]).evolve.band(t)
        assert stages[f"iter{t}/labels"]["n_kept"] == sum(low <= r["agreement"] <= high for r in labels)
    reasons = []  # (stage, reason as the report words it, count), from the manifest
    for stage, info in stages.items():
        reasons += [(stage, f"image skipped: {r}", n) for r, n in (info.get("skipped_images") or {}).items()]
        sk = info.get("skipped")
        reasons += [(stage, r, n) for r, n in sk.items()] if isinstance(sk, dict) else \
            [(stage, f"stage skipped: {sk}", None)] if sk else []
    assert reasons  # the run's invalid questions are skipped by labeling, with their reasons
    table = doc.find("table", id="skipped")
    shown = [r for r in table.find_all("tr") if "data-reason" in r.attrs]
    assert len(shown) == len(reasons)
    for stage, reason, count in reasons:
        assert_shows(cells(table.find("tr", data_stage=stage, data_reason=reason))["count"], count)


def test_config_and_command_are_exact(finished):
    run, out = finished
    doc = parse(out)
    m = manifest(run)
    assert json.loads(doc.find("pre", id="config").text()) == m["config"]
    assert doc.find("pre", id="command").text() == shlex.join(m["command"])
    assert m["command"][:2] == ["visplay", "evolve"]  # the fixture started the run with the CLI
    data = json.loads(doc.find("script", id="report-data").text())
    assert data["state"] == "finished" and data["stages"]["iter1/labels"]["n_kept"] == m["stages"]["iter1/labels"]["n_kept"]
    assert doc.find("div", id="run-state").attrs["data-state"] == "finished"
    assert not [n for n in doc.iter() if "missing" in n.classes() or "data-missing" in n.attrs]


# ---------------------------------------------------------------- the crashed run


def test_crashed_report_marks_missing_parts(crashed):
    run, out = crashed
    doc = parse(out)
    m = manifest(run)
    order = stage_names(n_iterations(run))
    done = [s for s in order if m["stages"].get(s, {}).get("state") == "done"]
    assert done == order[:order.index("iter2/labels")]  # the SIGKILL came during iter2/labels
    assert list((run / "iter2" / "labels.parts").glob("*.parquet"))  # with a chunk part on disk
    banner = doc.find("div", id="run-state")
    assert banner.attrs["data-state"] == "stopped" and banner.attrs["data-next-stage"] == "iter2/labels"
    assert "stopped before iter2/labels" in banner.text() and "--resume" in banner.text()
    marked = {n.attrs["data-missing"] for n in doc.iter() if "data-missing" in n.attrs}
    assert {"iter2/labels", "iter2/reasoner", "iter2/eval"} <= marked
    assert not marked & set(done)
    row = doc.find("table", id="accuracy").find("tr", data_stage="iter2/eval")
    assert "missing" in row.classes() and "not reached" in row.text()
    assert "missing" in doc.find("table", id="label-accuracy").find("tr", data_stage="iter2/labels").classes()
    states = {r.attrs["data-stage"]: r.attrs["data-state"] for r in doc.find("table", id="stages").find_all("tr")
              if "data-stage" in r.attrs}
    assert states == {s: "done" if s in done else "missing" for s in order}
    # what iteration 2 did produce is still shown: questioner curves and the questions, unlabeled
    steps = step_logs(run, "iter2/questioner")
    table = doc.find("table", id="questioner-steps-2")
    assert [int(r.attrs["data-step"]) for r in table.find_all("tr") if "data-step" in r.attrs] == \
        [r["step"] for r in steps]
    questions = rows(run, 2)
    cards = doc.find("div", id="gallery-2").find_all("figure")
    assert len(cards) == min(GALLERY_SIZE, len(questions)) and doc.find("div", id="gallery-2").find_all("img")
    assert all("not labeled yet" in c.text() for c in cards if questions[int(c.attrs["data-row"])]["valid"])
    assert "data-section-error" not in out.read_text()


def test_running_run_and_damaged_files(crashed, tmp_path):
    src, _ = crashed
    run = copy_run(src, tmp_path / "copy")
    with RunDir(run):  # the lock as `visplay evolve` holds it
        assert load_run(run).state == "running"
        doc = parse(report(run, tmp_path / "running.html"))
        assert doc.find("div", id="run-state").attrs["data-state"] == "running"
        assert "the run is still at iter2/labels" in doc.find("p", data_missing="iter2/labels").text()
    assert load_run(run).state == "stopped"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "iter2/labels", "ste')  # torn last line
    (run / "iter2" / "questions.parquet").write_bytes(b"not parquet")
    out = report(run, tmp_path / "r" / "damaged.html")
    doc = parse(out)
    problems = " ".join(p.text() for p in doc.find_all("p") if "problem" in p.classes())
    assert "unparseable" in problems and "questions.parquet" in problems
    assert doc.find("table", id="accuracy")


def test_doctests():
    import visplay.report.plots

    assert doctest.testmod(visplay.report.data).failed == 0
    assert doctest.testmod(visplay.report.plots).failed == 0


def test_cli(crashed, tmp_path, capsys):
    run, _ = crashed
    assert cli_main(["report", str(run), "--out", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").is_file() and "data-section-error" not in (tmp_path / "x.html").read_text()
    assert str(tmp_path / "x.html") in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- a real browser


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish in 120 s: {shlex.join(cmd)}")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"chromium failed (exit {e.returncode}): {e.stderr[-2000:]}")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (Debian: apt-get install -y "
                    "chromium); the headless-browser rendering check is skipped")
def test_renders_in_headless_chromium(finished, tmp_path):
    _, out = finished
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", out.resolve().as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 4000)
    assert len(image.getcolors(maxcolors=1 << 20) or range(1 << 20)) > 100  # text, tables and plots, not blank
    dom = _chromium(tmp_path, "--dump-dom", out.resolve().as_uri()).stdout
    n_img = len(parse(out).find_all("img"))
    assert dom.count("<img") == n_img
    assert f'data-images-total="{n_img}"' in dom and f'data-images-loaded="{n_img}"' in dom


# ---------------------------------------------------------------- read at a glance (#18 item 7)


class Drawn:
    """The matplotlib figures a report draws (as to_uri renders them), and each curves figure's panels."""

    def __init__(self):
        self.figs: list = []
        self.curves: list[tuple[list[str], object]] = []  # (panel titles asked for, the figure)


def draw(run: Path, out: Path) -> tuple[Path, Drawn]:
    """``report(run, out)`` while capturing the figures."""
    import visplay.report.plots as plots

    drawn, to_uri, curves_figure = Drawn(), plots.to_uri, plots.curves_figure

    def capture(fig):
        drawn.figs.append(fig)
        return to_uri(fig)

    def capture_curves(panels, *args, **kwargs):
        fig = curves_figure(panels, *args, **kwargs)
        drawn.curves.append(([title for title, _ in panels], fig))
        return fig

    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "to_uri", capture)
    mp.setattr(plots, "curves_figure", capture_curves)
    try:
        path = report(run, out)
    finally:
        mp.undo()
    return path, drawn


@pytest.fixture(scope="module")
def drawn(finished, tmp_path_factory):
    run, _ = finished
    return draw(run, tmp_path_factory.mktemp("drawn") / "report.html")[1]


def axes_with(figs, predicate) -> list:
    return [ax for fig in figs for ax in fig.axes if predicate(ax)]


def test_accuracy_error_bars_and_prior_line(finished, drawn):
    from matplotlib.container import BarContainer, ErrorbarContainer

    run, out = finished
    doc = parse(out)
    stages = manifest(run)["stages"]
    n = n_iterations(run)
    for r in [r for r in doc.find("table", id="accuracy").find_all("tr") if "data-stage" in r.attrs]:
        info = stages[r.attrs["data-stage"]]
        assert_shows(cells(r)["greedy_se"], math.sqrt(info["greedy"] * (1 - info["greedy"]) / info["n"]), close=True)
    prior = json.loads((run / "iter0" / "eval" / "summary.json").read_text())["overall"]["prior"]
    assert float(doc.find("p", id="answer-prior").attrs["data-value"]) == prior
    (ax,) = axes_with(drawn.figs, lambda a: a.get_ylabel().startswith("held-out accuracy"))
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3  # greedy, maj@k, pass@k
    segments = bars[0].lines[2][0].get_segments()
    assert len(segments) == n + 1
    for t, seg in enumerate(segments):
        info = stages[f"iter{t}/eval"]
        se = math.sqrt(info["greedy"] * (1 - info["greedy"]) / info["n"])
        assert math.isclose(seg[1][1] - seg[0][1], 2 * se, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose((seg[1][1] + seg[0][1]) / 2, info["greedy"], rel_tol=1e-9, abs_tol=1e-12)
    flat = [ln for ln in ax.lines if len(set(ln.get_ydata())) == 1 and math.isclose(ln.get_ydata()[0], prior)]
    assert flat and "prior" in flat[0].get_label()
    # the family chart; the per-level panel draws the same kind of chart with "level <n>" ticks
    (fam,) = axes_with(drawn.figs, lambda a: a.get_ylabel().startswith("greedy accuracy")
                       and not any(t.get_text().startswith("level ") for t in a.get_xticklabels()))
    assert [c for c in fam.containers if isinstance(c, BarContainer)] and \
        len([c for c in fam.containers if isinstance(c, ErrorbarContainer)]) == n + 1  # one per iteration
    assert any("prior" in str(c.get_label()) for c in fam.collections)


def test_step_plots_have_integer_ticks(drawn):
    from matplotlib.ticker import MaxNLocator

    steps = axes_with(drawn.figs, lambda a: a.get_xlabel() == "step")
    assert len(steps) == sum(len(titles) for titles, _ in drawn.curves) > 0
    for ax in steps:
        loc = ax.xaxis.get_major_locator()
        assert isinstance(loc, MaxNLocator) and loc._integer
        assert all(float(v).is_integer() for v in ax.get_xticks())


def series_values(run: Path, role: str, key: str) -> set:
    """Every value of ``key`` in the step logs of ``role``'s phases (all iterations together)."""
    return {r[key] for t in range(1, n_iterations(run) + 1) for r in step_logs(run, f"iter{t}/{role}")
            if isinstance(r.get(key), (int, float))}


def test_constant_series_are_not_plotted_but_named(finished, drawn):
    from visplay.report.html import QUESTIONER_PANELS, REASONER_PANELS

    run, out = finished
    doc = parse(out)
    asked = sorted(titles for titles, _ in drawn.curves)
    expected, n_constant = [], 0
    for role, panels in (("questioner", QUESTIONER_PANELS), ("reasoner", REASONER_PANELS)):
        values = {key: series_values(run, role, key) for key, _ in panels}
        constant = {key: next(iter(v)) for key, v in values.items() if len(v) == 1}
        n_constant += len(constant)
        expected.append([title for key, title in panels if key not in constant])
        if not constant:
            assert not doc.find_all("p", id=f"{role}-constant")
            continue
        spans = doc.find("p", id=f"{role}-constant").find_all("span")
        assert [s.attrs["data-key"] for s in spans] == list(constant)
        for span in spans:
            value = constant[span.attrs["data-key"]]
            title = dict(panels)[span.attrs["data-key"]]
            assert float(span.attrs["data-value"]) == value
            assert span.text() == f"{title} ({span.attrs['data-key']}) ≡ {value:.3f}"
    assert asked == sorted(expected)  # each role's curves: exactly the series that move
    assert n_constant  # the fixture's run has some (e.g. a format reward of 1 at every step)


def expected_events(run: Path, role: str) -> set[tuple[str, int, str]]:
    """(stage, step, kind) the report must flag: KL above 5x the phase's median KL, and health-guard stops."""
    out = set()
    for t in range(1, n_iterations(run) + 1):
        stage = f"iter{t}/{role}"
        steps = step_logs(run, stage)
        kls = [r["kl"] for r in steps if isinstance(r.get("kl"), (int, float))]
        med = median(kls) if kls else 0
        out |= {(stage, r["step"], "kl") for r in steps if med and r["kl"] > 5 * med}
        guard = manifest(run)["stages"][stage].get("guard")
        if guard:
            out.add((stage, int(re.search(r"at step (\d+)", guard).group(1)), guard.split()[0]))
    return out


def shown_events(doc: Node, role: str) -> dict[tuple[str, int, str], Node]:
    found = doc.find_all("table", id=f"{role}-events")
    if not found:
        assert doc.find("p", id=f"{role}-events-none")
        return {}
    return {(r.attrs["data-stage"], int(r.attrs["data-step"]), r.attrs["data-kind"]): r
            for r in found[0].find_all("tr") if "data-stage" in r.attrs}


def flagged_marks(drawn: Drawn) -> dict[str, set]:
    """Panel title -> the (step, value) points drawn as flagged, over both roles' curves."""
    marks: dict[str, set] = {}
    for ax in axes_with([fig for _, fig in drawn.curves if fig is not None], lambda a: a.get_xlabel() == "step"):
        for ln in ax.lines:
            if ln.get_gid() == "flagged":
                marks.setdefault(ax.get_title(), set()).update(zip(ln.get_xdata(), ln.get_ydata()))
    return marks


def test_kl_spike_and_guard_stop_are_flagged(finished, tmp_path):
    from visplay.evolve.grpo import HealthGuard

    src, out = finished
    doc = parse(out)
    for role in ("questioner", "reasoner"):  # the real run: whatever it has, and nothing else
        assert set(shown_events(doc, role)) == expected_events(src, role)
    run = copy_run(src, tmp_path / "spiky")
    # a KL spike: a step not flagged yet, of the first phase with a KL above 0, set to 10x the phase's
    # largest KL (so above 5x the phase median, whatever the other steps are)
    phases = [f"iter{t}/{role}" for t in range(1, n_iterations(run) + 1) for role in ("questioner", "reasoner")]
    stage = next(s for s in phases if max(r["kl"] for r in step_logs(run, s)) > 0)
    before = expected_events(run, stage.split("/")[1])
    spiked = next(r for r in step_logs(run, stage) if (stage, r["step"], "kl") not in before)
    spike = 10 * max(r["kl"] for r in step_logs(run, stage))
    lines = metrics(run)
    for r in lines:
        if r.get("stage") == stage and r.get("step") == spiked["step"] and "reward" in r:
            r["kl"] = spike
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    # a health-guard stop at iter1/reasoner's last step, worded by the guard itself (max_kl = -1 stops any step)
    last = step_logs(run, "iter1/reasoner")[-1]
    guard = HealthGuard(max_kl=-1.0, min_entropy=0.0).check(last, last["step"])
    assert guard and guard.endswith(f"at step {last['step']}")
    m = manifest(run)
    m["stages"]["iter1/reasoner"]["guard"] = guard
    (run / "manifest.json").write_text(json.dumps(m))
    path, figs = draw(run, tmp_path / "spiky.html")
    doc = parse(path)
    marks = flagged_marks(figs)
    role = stage.split("/")[1]
    for r in ("questioner", "reasoner"):
        shown, want = shown_events(doc, r), expected_events(run, r)
        assert set(shown) == want
        for key, row in shown.items():
            value = next(x[key[2]] for x in step_logs(run, key[0]) if x["step"] == key[1])
            assert_shows(cells(row)["value"], value)
            assert (key[1], value) in marks["KL" if key[2] == "kl" else "entropy"]
    assert (stage, spiked["step"], "kl") in shown_events(doc, role)
    row = shown_events(doc, "reasoner")[("iter1/reasoner", last["step"], "kl")]
    assert "health guard" in row.text() and guard in row.text()
    assert (spiked["step"], spike) in marks["KL"]


def test_final_model_box_and_snippet(finished, crashed):
    for (run, out), stage in ((finished, f"iter{n_iterations(finished[0])}/reasoner"), (crashed, "iter1/reasoner")):
        box = parse(out).find("div", id="final-model")
        path = run_path(run, manifest(run)["stages"][stage]["model"])
        assert (path / "config.json").is_file()  # the run's own reasoner (relative paths resolve into this copy)
        assert box.attrs["data-stage"] == stage and box.attrs["data-path"] == str(path)
        assert box.find("pre", id="load-snippet").text().splitlines() == [
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            f"model = AutoModelForImageTextToText.from_pretrained({str(path)!r})",
            f"processor = AutoProcessor.from_pretrained({str(path)!r})"]


def test_degenerate_questions_are_flagged_in_the_gallery(finished, tmp_path):
    import pyarrow as pa

    src, out = finished
    for t in range(1, n_iterations(src) + 1):  # the real run's own questions: flagged exactly when degenerate
        labels = rows(src, t)
        for card in parse(out).find("div", id=f"gallery-{t}").find_all("figure"):
            row = labels[int(card.attrs["data-row"])]
            assert card.attrs.get("data-degenerate") == (degenerate(row["question"]) if row["valid"] else None)
    run = copy_run(src, tmp_path / "degenerate")
    bad = {0: ("Are there more green objects than green objects? A. no B. yes", "names green twice"),
           1: ("How many objects are red or red?", "names red twice"),
           2: ("What colour is the left-most square? A. purple B. purple C. red", "duplicate options: purple")}
    path = run / "iter1" / "labels.parquet"
    labels = pq.read_table(path).to_pylist()
    expected = {i: degenerate(r["question"]) for i, r in enumerate(labels) if r["valid"]}
    for i, r in enumerate(labels):
        if r["valid"] and i % 2 == 0:
            r["question"], expected[i] = bad[i % 3]
    pq.write_table(pa.Table.from_pylist(labels, schema=pq.read_schema(path)), path)
    doc = parse(report(run))
    cards = doc.find("div", id="gallery-1").find_all("figure")
    assert any(expected.get(int(c.attrs["data-row"])) for c in cards)
    assert any(not expected.get(int(c.attrs["data-row"])) for c in cards)
    for card in cards:
        flaw = expected.get(int(card.attrs["data-row"]))
        if flaw:
            assert "degenerate" in card.classes() and card.attrs["data-degenerate"] == flaw
            assert f"degenerate: {flaw}" in card.text()
        else:
            assert "degenerate" not in card.classes() and "data-degenerate" not in card.attrs
    assert doc.find("p", id="degenerate-1").attrs["data-value"] == str(sum(map(bool, expected.values())))
    n = n_iterations(run)
    for t in range(2, n + 1):
        want = sum(bool(degenerate(r["question"])) for r in rows(run, t) if r["valid"])
        assert doc.find("p", id=f"degenerate-{t}").attrs["data-value"] == str(want)
