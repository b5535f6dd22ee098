"""`visplay report`: the HTML page of a synthetic finished run and a synthetic crashed run.

Offline, no model: run directories are written by hand (`tests/synthetic.py`), reports are
parsed with html.parser. Checked: every <img> is a data URI that PIL decodes, the gallery has
thumbnails, every number in the machine-readable tables equals manifest.json / metrics.jsonl /
summary.json / labels.parquet (shown with 3 decimals), the crashed run's report marks what is
missing, and the file is written atomically. When /usr/bin/chromium exists, a headless browser
renders the page (screenshot not blank, every image loaded); otherwise that test is skipped.
Run: `pytest -q tests/test_report.py` (about 15 s of CPU; install chromium with
`apt-get install -y chromium` for the browser check).
"""

from __future__ import annotations

import base64
import doctest
import io
import json
import math
import shlex
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from visplay.evolve.rundir import RunDir
from visplay.cli import main
from visplay.report import write_report
import visplay.report.data
from visplay.report.data import load_run
from synthetic import make_synthetic_run

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


def assert_shows(td: Node, expected) -> None:
    """The cell holds exactly ``expected`` in data-value and shows it with the shared 3-decimal format."""
    if expected is None:
        assert td.attrs["data-value"] == "" and td.text() == "–"
    elif isinstance(expected, float):
        assert float(td.attrs["data-value"]) == expected
        assert td.text() == f"{expected:.3f}"
    else:
        assert td.attrs["data-value"] == str(expected) and td.text() == str(expected)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = make_synthetic_run(tmp_path_factory.mktemp("report") / "finished", iterations=2)
    return run, write_report(run)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    run = make_synthetic_run(tmp_path_factory.mktemp("report") / "crashed", iterations=2, stop_before="iter2/labels")
    return run, write_report(run)


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


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


def test_every_img_is_a_data_uri_that_decodes(finished, crashed):
    for _, out in (finished, crashed):
        imgs = parse(out).find_all("img")
        assert len(imgs) >= 10
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
    for t in (1, 2):
        rows = pq.read_table(run / f"iter{t}" / "labels.parquet").to_pylist()
        gallery = doc.find("div", id=f"gallery-{t}")
        cards = gallery.find_all("figure")
        assert 4 <= len(cards) <= 8
        assert len(gallery.find_all("img")) == len(cards)
        kinds |= set().union(*(c.classes() for c in cards))
        for card in cards:
            row = rows[int(card.attrs["data-row"])]
            assert row["image_id"] in card.text()
            if row["valid"]:
                assert row["question"] in card.text() and str(row["questioner_answer"]) in card.text()
            if row["label"] is not None:
                assert float(card.attrs["data-agreement"]) == row["agreement"]
                assert f"c = {row['agreement']:.3f}" in card.text() and row["true_answer"] in card.text()
    assert {"kept", "outside", "invalid"} <= kinds  # kept, outside the band, and unparseable questions all shown


def test_accuracy_table_equals_manifest(finished):
    run, out = finished
    stages = manifest(run)["stages"]
    rows = [r for r in parse(out).find("table", id="accuracy").find_all("tr") if "data-stage" in r.attrs]
    assert [r.attrs["data-stage"] for r in rows] == ["iter0/eval", "iter1/eval", "iter2/eval"]
    for r in rows:
        info, c = stages[r.attrs["data-stage"]], cells(r)
        for key in ("greedy", "maj", "pass", "n"):
            assert_shows(c[key], info[key])
    gain = cells(rows[2])["gain"]
    assert float(gain.attrs["data-value"]) == stages["iter2/eval"]["greedy"] - stages["iter0/eval"]["greedy"]


def test_family_benchmark_and_label_tables_equal_their_sources(finished):
    run, out = finished
    doc = parse(out)
    for t in (0, 1, 2):
        summary = json.loads((run / f"iter{t}" / "eval" / "summary.json").read_text())
        for fam, s in summary["by_family"].items():
            row = doc.find("table", id="accuracy-by-family").find("tr", data_family=fam)
            tds = [td for td in row.find_all("td") if td.attrs.get("data-iter") == str(t)]
            assert [td.attrs["data-key"] for td in tds] == ["greedy", "maj"]
            assert_shows(tds[0], s["greedy"])
            assert_shows(tds[1], s["maj"])
    for t in (0, 2):
        bench = json.loads((run / f"iter{t}" / "bench" / "summary.json").read_text())
        row = doc.find("table", id="benchmarks").find("tr", data_iter=str(t))
        for td in row.find_all("td", data_key="accuracy"):
            assert_shows(td, bench["benchmarks"][td.attrs["data-benchmark"]]["accuracy"])
        assert_shows(cells(row)["average"], bench["average"]["accuracy"])
    stages = manifest(run)["stages"]
    table = doc.find("table", id="label-accuracy")
    for t in (1, 2):
        c = cells(table.find("tr", data_iter=str(t)))
        for key in ("n_labeled", "n_kept", "label_accuracy", "label_accuracy_kept", "questioner_answer_accuracy",
                    "mean_agreement"):
            assert_shows(c[key], stages[f"iter{t}/labels"][key])


def test_step_tables_equal_metrics_jsonl(finished):
    run, out = finished
    doc = parse(out)
    records = metrics(run)
    for t in (1, 2):
        for role, keys in (("questioner", ("reward", "questioner/uncertainty", "questioner/diversity_penalty",
                                           "questioner/valid")),
                           ("reasoner", ("reward", "reasoner/accuracy", "reasoner/format", "completions/mean_length"))):
            steps = [r for r in records if r["stage"] == f"iter{t}/{role}" and "reward" in r]
            rows = [r for r in doc.find("table", id=f"{role}-steps-{t}").find_all("tr") if "data-step" in r.attrs]
            assert len(rows) == len(steps) == 6
            for r, rec in zip(rows, steps):
                for key in keys:
                    assert_shows(cells(r)[key], rec[key])


def test_qtype_agreement_and_skipped_tables(finished):
    run, out = finished
    doc = parse(out)
    stages = manifest(run)["stages"]
    for t in (1, 2):
        questions = pq.read_table(run / f"iter{t}" / "questions.parquet").to_pylist()
        c = cells(doc.find("table", id="qtype-mix").find("tr", data_iter=str(t)))
        assert_shows(c["total"], len(questions))
        assert_shows(c["invalid"], sum(not q["valid"] for q in questions))
        labels = [r for r in pq.read_table(run / f"iter{t}" / "labels.parquet").to_pylist() if r["label"] is not None]
        row = doc.find("table", id="agreement").find("tr", data_iter=str(t))
        shown = {float(td.attrs["data-c"]): int(td.attrs["data-value"]) for td in row.find_all("td") if "data-c" in td.attrs}
        assert sum(shown.values()) == len(labels)
        for value, count in shown.items():
            assert count == sum(math.isclose(r["agreement"], value) for r in labels)
        assert_shows(cells(row)["in_band"], stages[f"iter{t}/labels"]["n_kept"])
        for reason, count in stages[f"iter{t}/labels"]["skipped"].items():
            assert_shows(cells(doc.find("tr", data_stage=f"iter{t}/labels", data_reason=reason))["count"], count)
    assert doc.find("tr", data_stage="iter1/questions", data_reason="image skipped: image failed to decode")


def test_config_and_command_are_exact(finished):
    run, out = finished
    doc = parse(out)
    m = manifest(run)
    assert json.loads(doc.find("pre", id="config").text()) == m["config"]
    assert doc.find("pre", id="command").text() == shlex.join(m["command"])
    data = json.loads(doc.find("script", id="report-data").text())
    assert data["state"] == "finished" and data["stages"]["iter1/labels"]["n_kept"] == m["stages"]["iter1/labels"]["n_kept"]
    assert doc.find("div", id="run-state").attrs["data-state"] == "finished"
    assert not [n for n in doc.iter() if "missing" in n.classes() or "data-missing" in n.attrs]


# ---------------------------------------------------------------- the crashed run


def test_crashed_report_marks_missing_parts(crashed):
    run, out = crashed
    doc = parse(out)
    banner = doc.find("div", id="run-state")
    assert banner.attrs["data-state"] == "stopped" and banner.attrs["data-next-stage"] == "iter2/labels"
    assert "stopped before iter2/labels" in banner.text() and "--resume" in banner.text()
    marked = {n.attrs["data-missing"] for n in doc.iter() if "data-missing" in n.attrs}
    assert {"iter2/labels", "iter2/reasoner", "iter2/eval"} <= marked
    assert not marked & {"iter1/labels", "iter1/eval", "iter2/questions", "iter0/eval"}
    row = doc.find("table", id="accuracy").find("tr", data_stage="iter2/eval")
    assert "missing" in row.classes() and "not reached" in row.text()
    assert "missing" in doc.find("table", id="label-accuracy").find("tr", data_stage="iter2/labels").classes()
    states = {r.attrs["data-stage"]: r.attrs["data-state"] for r in doc.find("table", id="stages").find_all("tr")
              if "data-stage" in r.attrs}
    assert states["iter2/questions"] == "done" and states["iter2/labels"] == states["iter2/eval"] == "missing"
    # what iteration 2 did produce is still shown: questioner curves and the questions, unlabeled
    assert doc.find("table", id="questioner-steps-2")
    assert doc.find("div", id="gallery-2").find_all("img")
    assert "not labeled yet" in doc.find("div", id="gallery-2").text()
    assert "data-section-error" not in out.read_text()


def test_running_run_and_damaged_files(crashed, tmp_path):
    src, _ = crashed
    run = tmp_path / "copy"
    shutil.copytree(src, run)
    with RunDir(run):  # the lock as `visplay evolve` holds it
        assert load_run(run).state == "running"
    assert load_run(run).state == "stopped"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "iter2/labels", "ste')  # torn last line
    (run / "iter2" / "questions.parquet").write_bytes(b"not parquet")
    out = write_report(run, tmp_path / "r" / "damaged.html")
    doc = parse(out)
    problems = " ".join(p.text() for p in doc.find_all("p") if "problem" in p.classes())
    assert "unparseable" in problems and "questions.parquet" in problems
    assert doc.find("table", id="accuracy") and "data-section-error" not in out.read_text()


def test_doctests():
    import visplay.report.plots

    assert doctest.testmod(visplay.report.data).failed == 0
    assert doctest.testmod(visplay.report.plots).failed == 0


def test_cli_parser(crashed, tmp_path, capsys):
    run, _ = crashed
    assert main(["report", str(run), "--out", str(tmp_path / "x.html")]) == 0 and (tmp_path / "x.html").is_file()
    assert str(tmp_path / "x.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
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


@pytest.fixture(scope="module")
def drawn(finished):
    """The matplotlib figures the finished run's report draws, captured as to_uri renders them."""
    import visplay.report.html
    import visplay.report.plots as plots

    run, _ = finished
    figs, original = [], plots.to_uri

    def capture(fig):
        figs.append(fig)
        return original(fig)

    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "to_uri", capture)
    try:
        visplay.report.html.build_report(run)
    finally:
        mp.undo()
    return figs


def axes_with(figs, predicate) -> list:
    return [ax for fig in figs for ax in fig.axes if predicate(ax)]


def test_accuracy_error_bars_and_prior_line(finished, drawn):
    from matplotlib.container import BarContainer, ErrorbarContainer

    run, out = finished
    doc = parse(out)
    stages = manifest(run)["stages"]
    for r in [r for r in doc.find("table", id="accuracy").find_all("tr") if "data-stage" in r.attrs]:
        info = stages[r.attrs["data-stage"]]
        assert_shows(cells(r)["greedy_se"], math.sqrt(info["greedy"] * (1 - info["greedy"]) / info["n"]))
    prior = json.loads((run / "iter0" / "eval" / "summary.json").read_text())["overall"]["prior"]
    assert float(doc.find("p", id="answer-prior").attrs["data-value"]) == prior
    (ax,) = axes_with(drawn, lambda a: a.get_ylabel().startswith("held-out accuracy"))
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3  # greedy, maj@k, pass@k
    greedy = bars[0]
    segments = greedy.lines[2][0].get_segments()
    for t, seg in enumerate(segments):
        info = stages[f"iter{t}/eval"]
        se = math.sqrt(info["greedy"] * (1 - info["greedy"]) / info["n"])
        assert math.isclose(seg[1][1] - seg[0][1], 2 * se, rel_tol=1e-9)
    flat = [ln for ln in ax.lines if len(set(ln.get_ydata())) == 1 and math.isclose(ln.get_ydata()[0], prior)]
    assert flat and "prior" in flat[0].get_label()
    (fam,) = axes_with(drawn, lambda a: a.get_ylabel().startswith("greedy accuracy"))
    assert [c for c in fam.containers if isinstance(c, BarContainer)] and \
        len([c for c in fam.containers if isinstance(c, ErrorbarContainer)]) == 3  # one per iteration
    assert any("prior" in str(c.get_label()) for c in fam.collections)


def test_step_plots_have_integer_ticks(drawn):
    from matplotlib.ticker import MaxNLocator

    steps = axes_with(drawn, lambda a: a.get_xlabel() == "step")
    assert len(steps) >= 8
    for ax in steps:
        loc = ax.xaxis.get_major_locator()
        assert isinstance(loc, MaxNLocator) and loc._integer
        assert all(float(v).is_integer() for v in ax.get_xticks())


def test_constant_series_are_not_plotted_but_named(finished, drawn):
    run, out = finished
    doc = parse(out)
    records = [r for r in metrics(run) if r["stage"].endswith("/questioner") and "reward" in r]
    assert {r["questioner/agreement"] for r in records} == {0.6}  # the synthetic run's constant series
    note = doc.find("p", id="questioner-constant")
    (span,) = note.find_all("span")
    assert span.attrs["data-key"] == "questioner/agreement" and float(span.attrs["data-value"]) == 0.6
    assert "reasoner agreement" in note.text() and "0.600" in note.text()
    titles = {ax.get_title() for ax in axes_with(drawn, lambda a: a.get_xlabel() == "step")}
    assert "reasoner agreement" not in titles and {"uncertainty", "accuracy reward", "format reward"} <= titles
    assert not doc.find_all("p", id="reasoner-constant")  # every reasoner series moves


def test_kl_spike_and_guard_stop_are_flagged(finished, tmp_path):
    import visplay.report.plots as plots

    src, out = finished
    doc = parse(out)
    assert doc.find("p", id="reasoner-events-none") and not doc.find_all("table", id="reasoner-events")
    run = tmp_path / "spiky"
    shutil.copytree(src, run)
    lines = metrics(run)
    for r in lines:
        if r["stage"] == "iter2/reasoner" and r.get("step") == 3 and "reward" in r:
            r["kl"] = 50.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    m = manifest(run)
    m["stages"]["iter1/reasoner"]["guard"] = "entropy 0.05 < 0.1 (from 2 at the start) at step 5"
    (run / "manifest.json").write_text(json.dumps(m))
    figs, original = [], plots.to_uri
    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "to_uri", lambda fig: figs.append(fig) or original(fig))
    try:
        path = write_report(run)
    finally:
        mp.undo()
    table = parse(path).find("table", id="reasoner-events")
    rows = {(r.attrs["data-stage"], r.attrs["data-step"], r.attrs["data-kind"]): r
            for r in table.find_all("tr") if "data-stage" in r.attrs}
    assert set(rows) == {("iter2/reasoner", "3", "kl"), ("iter1/reasoner", "5", "entropy")}
    assert_shows(cells(rows[("iter2/reasoner", "3", "kl")])["value"], 50.0)
    entropy5 = next(r["entropy"] for r in lines if r["stage"] == "iter1/reasoner" and r.get("step") == 5 and "reward" in r)
    assert_shows(cells(rows[("iter1/reasoner", "5", "entropy")])["value"], entropy5)
    assert "health guard" in rows[("iter1/reasoner", "5", "entropy")].text()
    marked = {ax.get_title(): [tuple(zip(ln.get_xdata(), ln.get_ydata())) for ln in ax.lines if ln.get_gid() == "flagged"]
              for ax in axes_with(figs, lambda a: a.get_xlabel() == "step")}
    assert ((3, 50.0),) in marked["KL"] and ((5, entropy5),) in marked["entropy"]


def test_final_model_box_and_snippet(finished, crashed, tmp_path):
    for (run, out), stage in ((finished, "iter2/reasoner"), (crashed, "iter1/reasoner")):
        box = parse(out).find("div", id="final-model")
        path = manifest(run)["stages"][stage]["model"]
        assert box.attrs["data-stage"] == stage and box.attrs["data-path"] == path
        assert box.find("pre", id="load-snippet").text().splitlines() == [
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            f"model = AutoModelForImageTextToText.from_pretrained({path!r})",
            f"processor = AutoProcessor.from_pretrained({path!r})"]
    run = tmp_path / "relative"
    shutil.copytree(finished[0], run)
    m = manifest(run)
    m["stages"]["iter2/reasoner"]["model"] = "iter2/reasoner"
    (run / "manifest.json").write_text(json.dumps(m))
    box = parse(write_report(run)).find("div", id="final-model")
    assert box.attrs["data-path"] == str(run / "iter2" / "reasoner")
    assert f"from_pretrained({str(run / 'iter2' / 'reasoner')!r})" in box.text()


def test_degenerate_questions_are_flagged_in_the_gallery(finished, tmp_path):
    import pyarrow as pa

    src, out = finished
    assert all("data-degenerate" not in c.attrs for c in parse(out).find("div", id="gallery-1").find_all("figure"))
    run = tmp_path / "degenerate"
    shutil.copytree(src, run)
    bad = {0: ("Are there more green objects than green objects? A. no B. yes", "names green twice"),
           1: ("How many objects are red or red?", "names red twice"),
           2: ("What colour is the left-most square? A. purple B. purple C. red", "duplicate options: purple")}
    path = run / "iter1" / "labels.parquet"
    rows = pq.read_table(path).to_pylist()
    expected = {}
    for i, r in enumerate(rows):
        if r["valid"] and i % 2 == 0:
            r["question"], expected[i] = bad[i % 3]
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    doc = parse(write_report(run))
    cards = doc.find("div", id="gallery-1").find_all("figure")
    assert any(int(c.attrs["data-row"]) in expected for c in cards)
    assert any(int(c.attrs["data-row"]) not in expected for c in cards)
    for card in cards:
        i = int(card.attrs["data-row"])
        if i in expected:
            assert "degenerate" in card.classes() and card.attrs["data-degenerate"] == expected[i]
            assert f"degenerate: {expected[i]}" in card.text()
        else:
            assert "degenerate" not in card.classes() and "data-degenerate" not in card.attrs
    assert doc.find("p", id="degenerate-1").attrs["data-value"] == str(len(expected))
    assert doc.find("p", id="degenerate-2").attrs["data-value"] == "0"
