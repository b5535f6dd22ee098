"""`visplay report RUN_DIR [--out FILE]`: one self-contained HTML page that shows what a run did.

Sections, in the order of the loop: where the run stands; held-out accuracy per iteration (overall,
by family, and the benchmark table when RUN/iter<t>/bench/summary.json exists); the questioner's
GRPO (reward and its parts, question-type mix); the silver labels (who voted and by which rule, read
from the run's config by `visplay.modes`; agreement c per iteration with the kept band, pseudo-label
accuracy — the paper's Table 2); the reasoner's training (its objective, from the config; under GRPO
the accuracy and format rewards, response length); a gallery of generated questions with their images; what was
skipped and why; the exact config and command.

Every number is copied from manifest.json, metrics.jsonl or a summary.json and printed with
`visplay.status.fmt` (3 decimals); each table cell also carries the exact value in ``data-value``
(and tables have ids: ``accuracy``, ``accuracy-by-family``, ``benchmarks``, ``label-accuracy``,
``qtype-mix``, ``agreement``, ``skipped``, ``stages``, ``questioner-steps-<t>``,
``reasoner-steps-<t>``, ``<role>-events``), so the page can be checked by a program. At a glance: accuracy
plots carry binomial-SE error bars and the answer prior as a line; step plots have integer ticks; constant
per-step series are named instead of drawn; KL spikes (> 5x the phase median) and health-guard stops are
marked and listed; a ``final-model`` box says how to load the last reasoner; degenerate questions (a colour
named twice, duplicate options) are flagged in the gallery. Plots and thumbnails are
data URIs (plots PNG, thumbnails JPEG); the page loads nothing from the network. Parts a crashed run never reached
are marked ``class="missing"`` with ``data-missing="<stage>"``. The file is written atomically.

Run: `visplay report runs/NAME` (writes runs/NAME/report.html); from code: `write_report(run_dir)`.
Test: `pytest -q tests/test_report.py` (includes a headless-chromium check when chromium is installed).
"""

from __future__ import annotations

import base64
import io
import json
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterable
from html import escape
from pathlib import Path

from visplay import modes
from visplay.config import config_from_manifest
from visplay.run.stages import BASELINE, ITERATION_STAGES, iteration_folder, stage_name
from visplay.report import plots
from visplay.report.data import Run, degenerate, load_run, qtype_mix
from visplay.status import duration, fmt, stage_summary
from visplay.io import atomic_write_text, check_writable_dir

QUESTIONER_PANELS = (("reward", "reward (total)"), ("questioner/uncertainty", "uncertainty"),
                     ("questioner/diversity_penalty", "diversity penalty"), ("questioner/valid", "format validity"),
                     ("questioner/agreement", "reasoner agreement"), ("kl", "KL"), ("entropy", "entropy"))
REASONER_PANELS = (("reward", "reward (total)"), ("reasoner/accuracy", "accuracy reward"),
                   ("reasoner/format", "format reward"), ("completions/mean_length", "response length (tokens)"),
                   ("kl", "KL"), ("entropy", "entropy"))
STEP_COLUMNS = {"questioner": ("reward", "questioner/uncertainty", "questioner/diversity_penalty", "questioner/valid",
                               "questioner/agreement", "loss", "kl", "entropy", "completions/mean_length"),
                "reasoner": ("reward", "reasoner/accuracy", "reasoner/format", "loss", "kl", "entropy",
                             "completions/mean_length")}
THUMB_PX = 160

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#1d2330}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #dde3ea;padding:3px 8px}
th{background:#f2f5f8;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.missing td,td.na{color:#9aa3ad}
.missing{background:#fff4e5;border-left:4px solid #f0a030;padding:6px 10px;margin:8px 0}
.banner{padding:8px 12px;border-radius:4px;margin:8px 0}.banner.finished{background:#e8f6ec;border-left:4px solid #2e9e52}
.banner.running{background:#e8f0fb;border-left:4px solid #3672c9}
.problem,.error{background:#fdecec;border-left:4px solid #d0453f;padding:6px 10px;margin:6px 0}
img.plot{max-width:100%;display:block;margin:6px 0}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:10px}
.card{border:1px solid #dde3ea;border-radius:6px;padding:8px;margin:0;background:#fbfcfd}
.card.kept{border-top:4px solid #2e9e52}.card.outside{border-top:4px solid #8a939c}.card.invalid{border-top:4px solid #d0453f}
.card img{width:140px;height:auto;image-rendering:pixelated;display:block;margin-bottom:6px}
.card .q{font-weight:600;margin-bottom:4px}.card dl{display:grid;grid-template-columns:auto 1fr;gap:1px 8px;margin:0;font-size:12px}
.card dt{color:#5b6570}.card dd{margin:0}.card pre{white-space:pre-wrap;font-size:11px;margin:4px 0 0}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}details{margin:6px 0}
.card.degenerate{background:#fff7f6}.flag{font-weight:400;font-size:12px}
.ok{color:#2e9e52}.bad{color:#d0453f}.muted{color:#5b6570}
"""

# Counts images that decoded, so a headless browser's --dump-dom shows whether they all loaded.
LOAD_CHECK = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok));
});
"""


# ---------------------------------------------------------------- small HTML helpers


def _attrs(attrs: dict) -> str:
    return "".join(f' {k.replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items() if v is not None)


def _value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def num(key: str, value, **attrs) -> str:
    """A table cell showing ``fmt(value)`` with the exact value in data-value."""
    cls = "num na" if value is None else "num"
    exact = escape(_value(value))
    return f'<td class="{cls}" data-key="{escape(key)}" data-value="{exact}"{_attrs(attrs)}>{escape(fmt(value))}</td>'


def text(value) -> str:
    return f"<td>{escape(str(value))}</td>"


def table(tid: str | None, head: Iterable[str], rows: Iterable[str], cls: str | None = None) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table{_attrs({'id': tid, 'class': cls})}><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def img(uri: str | None, alt: str, cls: str = "plot") -> str:
    return "" if uri is None else f'<img class="{cls}" src="{uri}" alt="{escape(alt)}">'


def missing(run: Run, stage: str, what: str) -> str:
    """The marker for a part the run has not produced (yet)."""
    if run.state == "running":
        why = f"the run is still at {run.current}"
    elif run.state == "stopped":
        why = f"the run stopped before {run.current}"
    else:
        why = "stage output not found"
    return f'<p class="missing" data-missing="{escape(stage)}">Not available: {escape(what)} — {escape(why)}.</p>'


def _label(t: int) -> str:
    return "base" if t == 0 else f"iter {t}"


# ---------------------------------------------------------------- sections


def overview(run: Run) -> str:
    m = run.manifest
    created = m.get("created")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if isinstance(created, (int, float)) else "?"
    done = [s for s in run.expected if run.done(s)]
    if run.state == "finished":
        msg = f"Finished: all {len(run.expected)} stages done."
    elif run.state == "running":
        msg = f"In progress: {run.current} is running ({run.lock.describe()}); {len(done)}/{len(run.expected)} stages done."
    else:
        msg = (f"Incomplete: the run stopped before {run.current} ({run.lock.describe()}); "
               f"{len(done)}/{len(run.expected)} stages done. Missing parts are marked below. "
               f"Resume with: visplay evolve --run {shlex.quote(str(run.root))} --resume")
    cls = "banner " + ("missing" if run.state == "stopped" else run.state)
    banner = (f'<div id="run-state" class="{cls}" data-state="{run.state}"'
              f'{_attrs({"data_next_stage": run.current})}>{escape(msg)}</div>')
    rows = []
    for s in run.expected:
        info = run.stages.get(s, {})
        if s in run.stages:
            state = info.get("state", "missing")
        else:
            state = "running" if s == run.current and run.state == "running" else "missing"
        secs = info.get("seconds")
        dur = duration(secs) if isinstance(secs, (int, float)) else ""
        cls = {"done": ""}.get(state, f' class="{"running" if state == "running" else "missing"}"')
        rows.append(f'<tr data-stage="{escape(s)}" data-state="{escape(state)}"{cls}>'
                    f"{text(s)}{text(state)}<td class='num'>{escape(dur)}</td>"
                    f"{text(stage_summary(s, info) if state == 'done' else '')}</tr>")
    problems = "".join(f'<p class="problem">{escape(p)}</p>' for p in run.problems)
    return (f"<p class='muted'>Run directory <code>{escape(str(run.root))}</code>, created {escape(when)}; "
            f"report written {escape(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>{banner}{problems}"
            f"{final_model_box(run)}<details><summary>Stages ({len(done)}/{len(run.expected)} done)</summary>"
            f"{table('stages', ['stage', 'state', 'time', 'result'], rows)}</details>")


def final_model(run: Run) -> tuple[str, Path] | None:
    """(stage, path) of the last finished reasoner; a relative ``model`` is relative to the run directory."""
    for t in sorted(run.iterations, reverse=True):
        stage = stage_name(t, "reasoner")
        model = run.info(stage).get("model") if t else None
        if model:
            path = Path(str(model))
            return stage, path if path.is_absolute() else run.root / path
    return None


def final_model_box(run: Run) -> str:
    found = final_model(run)
    if found is None:
        base = run.config.get("model") or "?"
        return (f"<div id='final-model' class='banner missing'>No reasoner trained yet: the model is still the base "
                f"model <code>{escape(str(base))}</code>.</div>")
    stage, path = found
    p = repr(str(path))
    snippet = (f"from transformers import AutoModelForImageTextToText, AutoProcessor\n"
               f"model = AutoModelForImageTextToText.from_pretrained({p})\n"
               f"processor = AutoProcessor.from_pretrained({p})")
    info = run.info(stage)
    why = f" (training was skipped: {escape(str(info['skipped']))}; the previous reasoner is carried over)" \
        if info.get("skipped") else ""
    return (f"<div id='final-model' class='banner finished' data-stage='{escape(stage)}' data-path='{escape(str(path))}'>"
            f"<strong>Final model</strong>: the reasoner of {escape(stage)}{why}, at <code>{escape(str(path))}</code>. "
            f"Load it with plain transformers:<pre id='load-snippet'>{escape(snippet)}</pre></div>")


def accuracy(run: Run) -> str:
    k = (run.config.get("eval") or run.evolve.get("eval") or {}).get("k")  # evolve.eval: runs before #17
    rows, points, parts = [], {}, []
    for t in run.iterations:
        stage = stage_name(t, "eval")
        info = run.info(stage)
        if info:
            points[t] = {key: info.get(key) for key in ("greedy", "maj", "pass", "n")}
            base = points.get(0, {}).get("greedy")
            gain = info["greedy"] - base if t and base is not None and info.get("greedy") is not None else None
            rows.append(f'<tr data-iter="{t}" data-stage="{stage}">{text(_label(t))}'
                        + "".join(num(key, info.get(key)) for key in ("greedy", "maj", "pass", "n"))
                        + num("greedy_se", plots.binomial_se(info.get("greedy"), info.get("n")))
                        + num("gain", gain) + "</tr>")
        else:
            rows.append(f'<tr data-iter="{t}" data-stage="{stage}" class="missing" data-missing="{stage}">{text(_label(t))}'
                        f'<td colspan="6">not reached</td></tr>')
            parts.append(missing(run, stage, f"held-out accuracy of {_label(t)}"))
    head = ["model", "greedy", f"maj@{k or 'k'}", f"pass@{k or 'k'}", "n", "greedy SE", "greedy gain vs base"]
    prior = answer_prior(run)
    prior_note = ("" if prior is None else
                  f"<p id='answer-prior' data-value='{escape(_value(prior))}'>Answer prior (always the most common "
                  f"training answer, no image; summary.json <code>overall.prior</code>): {escape(fmt(prior))} — the "
                  "dash-dotted line.</p>")
    out = [f"<p>Held-out world questions (scenes never used in training), {escape(str(k or '?'))} samples for maj/pass. "
           "Values from manifest.json; error bars and SE = binomial standard error sqrt(p(1−p)/n).</p>",
           table("accuracy", head, rows), *parts, prior_note,
           img(plots.accuracy(points, k, prior), "held-out accuracy per iteration")]
    out.append("<h3>By level (the ladder)</h3>" + by_level(run))
    out.append("<h3>By question family</h3>" + by_family(run))
    out.append("<h3>Benchmarks</h3>" + benchmarks(run))
    return "".join(out)


def answer_prior(run: Run) -> float | None:
    """overall.prior of the first eval summary that has one (the prior depends on the data, not the model)."""
    for _, it in sorted(run.iterations.items()):
        prior = ((it.eval or {}).get("overall") or {}).get("prior")
        if isinstance(prior, (int, float)):
            return float(prior)
    return None


def by_family(run: Run) -> str:
    evals = {t: it.eval for t, it in run.iterations.items() if it.eval and it.eval.get("by_family")}
    if not evals:
        return missing(run, BASELINE, "per-family accuracy (no eval summary.json)")
    ts = sorted(evals)
    fams = sorted({f for e in evals.values() for f in e["by_family"]})
    first = evals[ts[0]]["by_family"]
    rows = []
    for f in fams:
        cells = num("n", first.get(f, {}).get("n")) + num("prior", first.get(f, {}).get("prior"))
        for t in ts:
            s = evals[t]["by_family"].get(f, {})
            cells += num("greedy", s.get("greedy"), data_iter=t) + num("maj", s.get("maj"), data_iter=t)
        rows.append(f'<tr data-family="{escape(f)}">{text(f)}{cells}</tr>')
    head = ["family", "n", "prior"] + [f"{_label(t)} {m}" for t in ts for m in ("greedy", "maj@k")]
    marks = "".join(missing(run, stage_name(t, "eval"), f"per-family accuracy of {_label(t)}")
                    for t in run.iterations if t not in evals)
    ns = {f: s.get("n") for e in evals.values() for f, s in e["by_family"].items() if s.get("n")}
    priors = {f: s.get("prior") for f, s in first.items() if isinstance(s.get("prior"), (int, float))}
    chart = plots.by_family({t: {f: s.get("greedy", 0) for f, s in evals[t]["by_family"].items()} for t in ts},
                            len(run.iterations) - 1, ns, priors)
    return ("<p>From iter&lt;t&gt;/eval/summary.json; prior = the family's most common training answer "
            "(the no-image baseline).</p>" + table("accuracy-by-family", head, rows) + marks
            + img(chart, "accuracy by family"))


def by_level(run: Run) -> str:
    """The ladder per iteration: held-out greedy and complete listings by level (eval summaries),
    and what the labels stage kept at each level with the kept labels' accuracy (manifest)."""
    evals = {t: it.eval for t, it in run.iterations.items() if it.eval and it.eval.get("by_level")}
    if not evals:
        return "<p class='muted' id='by-level-none'>No per-level evaluation (images not from the world).</p>"
    ts = sorted(evals)
    levels = sorted({lv for e in evals.values() for lv in e["by_level"]}, key=int)
    labelled = set(map(str, evals[ts[0]].get("labelled_levels", [])))
    rows = []
    for lv in levels:
        cells = num("n", evals[ts[0]]["by_level"].get(lv, {}).get("n"))
        for t in ts:
            s = evals[t]["by_level"].get(lv, {})
            cells += num("greedy", s.get("greedy"), data_iter=t) + num("listing", s.get("listing_complete"), data_iter=t)
        name = f"{lv}{' (labelled)' if lv in labelled else ''}"
        rows.append(f'<tr data-level="{escape(lv)}">{text(name)}{cells}</tr>')
    head = ["level", "n"] + [f"{_label(t)} {m}" for t in ts for m in ("greedy", "complete listings")]
    kept_rows = []
    for t, stage in run.phases("labels"):
        mix = run.info(stage).get("by_level") or {}
        for lv, m in sorted(mix.items(), key=lambda kv: int(kv[0])):
            share = m["kept"] / m["valid"] if m.get("valid") else None
            kept_rows.append(f'<tr data-iter="{t}" data-level="{escape(lv)}">{text(_label(t))}{text(lv)}'
                             + num("valid", m.get("valid")) + num("kept", m.get("kept")) + num("kept_share", share)
                             + num("kept_accuracy", m.get("kept_accuracy")) + "</tr>")
    ns = {f"level {lv}": evals[ts[0]]["by_level"][lv].get("n") for lv in levels if lv in evals[ts[0]]["by_level"]}
    chart = plots.by_family({t: {f"level {lv}": s.get("greedy", 0) for lv, s in evals[t]["by_level"].items()} for t in ts},
                            len(run.iterations) - 1, ns, {})
    return ("<p>Held-out greedy accuracy by level (objects per scene) and the share of greedy walks that list "
            "exactly the scene's objects (the length probe), from iter&lt;t&gt;/eval/summary.json; below, what "
            "the labels stage kept per level and how often the kept labels were right (oracle, never "
            "trained on).</p>" + table("accuracy-by-level", head, rows) + img(chart, "accuracy by level")
            + (table("kept-by-level", ["iteration", "level", "valid questions", "kept", "kept share",
                                       "kept-label accuracy"], kept_rows) if kept_rows else ""))


def benchmarks(run: Run) -> str:
    runs = {t: it.bench for t, it in run.iterations.items() if it.bench and isinstance(it.bench.get("benchmarks"), dict)}
    if not runs:
        return ("<p class='muted' id='benchmarks-none'>No benchmark evaluations in this run (optional: "
                "<code>visplay eval --model RUN/iter&lt;t&gt;/reasoner --benchmarks … "
                "--out RUN/iter&lt;t&gt;/bench</code>).</p>")
    names: list[str] = []
    for b in runs.values():
        names += [n for n in b.get("order", list(b["benchmarks"])) if n not in names]
    titles = {n: b["benchmarks"][n].get("title", n) for b in runs.values() for n in b["benchmarks"]}
    rows = []
    for t, b in sorted(runs.items()):
        cells = "".join(num("accuracy", (b["benchmarks"].get(n) or {}).get("accuracy"), data_benchmark=n) for n in names)
        cells += num("average", (b.get("average") or {}).get("accuracy"))
        judge = (b.get("judge") or {}).get("model", "rule-based")
        rows.append(f'<tr data-iter="{t}">{text(_label(t))}{cells}{text(judge)}</tr>')
    return ("<p>Accuracy from iter&lt;t&gt;/bench/summary.json (judge verdicts where a judge was used).</p>"
            + table("benchmarks", ["model", *(titles[n] for n in names), "average", "graded by"], rows))


def _series(run: Run, role: str, key: str) -> dict[int, list[tuple[float, float]]]:
    return {t: [(r["step"], r[key]) for r in run.steps(stage) if isinstance(r.get(key), (int, float))]
            for t, stage in run.phases(role)}


KL_SPIKE = 5.0  # a step whose KL exceeds this many times its phase's median KL is flagged


def _panels(run: Run, role: str, spec, flagged: set[str] = frozenset()) -> tuple[list, str]:
    """The per-step panels worth drawing, and one line naming the constant ones that were left out
    (a metric with a flagged step is drawn even when constant, so its mark has a panel)."""
    panels, constant = [], []
    for key, title in spec:
        series = _series(run, role, key)
        values = {v for pts in series.values() for _, v in pts}
        if len(values) == 1 and key not in flagged:
            constant.append((key, title, values.pop()))
        else:
            panels.append((title, series))
    if not constant:
        return panels, ""
    items = ", ".join(f"<span data-key='{escape(k)}' data-value='{escape(_value(v))}'>{escape(title)} "
                      f"(<code>{escape(k)}</code>) ≡ {escape(fmt(v))}</span>" for k, title, v in constant)
    return panels, f"<p class='muted constant' id='{role}-constant'>Not plotted, the same at every step: {items}.</p>"


def events(run: Run, role: str) -> list[dict]:
    """Flagged steps of ``role``'s GRPO: KL above KL_SPIKE × the phase's median, and the health guard's stop."""
    import re
    from statistics import median

    out = []
    for t, stage in run.phases(role):
        steps = run.steps(stage)
        kls = [r["kl"] for r in steps if isinstance(r.get("kl"), (int, float))]
        med = median(kls) if kls else None
        for r in steps:
            kl = r.get("kl")
            if med and isinstance(kl, (int, float)) and kl > KL_SPIKE * med:
                out.append({"stage": stage, "t": t, "step": r["step"], "kind": "kl", "value": kl,
                            "reason": f"KL {fmt(kl)} > {KL_SPIKE:g} × phase median {fmt(med)}"})
        guard = (run.stages.get(stage) or {}).get("guard")
        if guard:
            m = re.search(r"at step (\d+)", str(guard))
            step = int(m.group(1)) if m else None
            kind = "entropy" if str(guard).startswith("entropy") else "kl"
            row = next((r for r in steps if r["step"] == step), {})
            out.append({"stage": stage, "t": t, "step": step, "kind": kind, "value": row.get(kind),
                        "reason": f"health guard stopped training: {guard}"})
    return out


def _events_table(role: str, evs: list[dict]) -> str:
    if not evs:
        return f"<p class='muted' id='{role}-events-none'>No KL/entropy events (KL never above {KL_SPIKE:g}× its phase median; no health-guard stop).</p>"
    rows = [f'<tr data-stage="{escape(e["stage"])}" data-step="{escape(_value(e["step"]))}" data-kind="{e["kind"]}">'
            f'{text(e["stage"])}{num("step", e["step"])}{text(e["kind"])}{num("value", e["value"])}{text(e["reason"])}</tr>'
            for e in evs]
    return ("<h3>Flagged steps</h3>"
            + table(f"{role}-events", ["stage", "step", "metric", "value", "why"], rows, "events"))


def _curves(run: Run, role: str, spec, alt: str) -> str:
    evs = events(run, role)
    panels, note = _panels(run, role, spec, {e["kind"] for e in evs})
    marks: dict[str, list] = {}
    for e in evs:
        if e["step"] is not None and isinstance(e["value"], (int, float)):
            marks.setdefault("KL" if e["kind"] == "kl" else "entropy", []).append((e["step"], e["value"]))
    return img(plots.curves(panels, len(run.iterations) - 1, marks), alt) + note + _events_table(role, evs)


def _step_tables(run: Run, role: str) -> str:
    out = []
    for t, stage in run.phases(role):
        steps = run.steps(stage)
        info = run.info(stage)
        if not steps:
            if info.get("skipped"):
                out.append(f"<p class='muted' data-skipped='{escape(stage)}'>{escape(stage)}: no training — "
                           f"{escape(str(info['skipped']))}.</p>")
            elif not run.done(stage):
                out.append(missing(run, stage, f"{role} GRPO curves of iteration {t}"))
            else:
                out.append(f"<p class='muted'>{escape(stage)}: no step logs in metrics.jsonl.</p>")
            continue
        cols = [c for c in STEP_COLUMNS[role] if any(c in r for r in steps)]
        rows = [f'<tr data-step="{escape(str(r["step"]))}">' + num("step", r["step"])
                + "".join(num(c, r.get(c)) for c in cols) + "</tr>" for r in steps]
        summary = (f"{escape(stage)}: {len(steps)} step{'' if len(steps) == 1 else 's'}, "
                   f"last reward {escape(fmt(steps[-1].get('reward')))}")
        steps_table = table(f"{role}-steps-{t}", ["step", *cols], rows, "steps")
        out.append(f"<details><summary>{summary}</summary>{steps_table}</details>")
    return "".join(out)


def questioner(run: Run) -> str:
    ev = run.evolve
    intro = ("<p>Questioner GRPO per step (metrics.jsonl): the reward is uncertainty (1 − |2c − 1|, c = the frozen "
             "reasoner's agreement) minus the diversity penalty, for well-formed questions; format validity = share "
             f"of completions that parse. m = {escape(str(ev.get('reward_samples', '?')))} reasoner samples per question, "
             f"diversity threshold {escape(fmt(ev.get('diversity_threshold')))}.</p>")
    return (intro + _curves(run, "questioner", QUESTIONER_PANELS, "questioner reward curves")
            + _step_tables(run, "questioner")
            + "<h3>Question-type mix</h3>" + qtypes(run))


def qtypes(run: Run) -> str:
    mix = {t: qtype_mix(it.questions) for t, it in run.iterations.items() if t and it.questions is not None}
    marks = "".join(missing(run, stage_name(t, "questions"), f"generated questions of iteration {t}")
                    for t in run.iterations if t and t not in mix)
    if not mix:
        return marks
    kinds = sorted({k for c in mix.values() for k in c if k != "invalid"}) + ["invalid"]
    rows = [f'<tr data-iter="{t}">{text(_label(t))}' + "".join(num(k, c.get(k, 0)) for k in kinds)
            + num("total", sum(c.values())) + "</tr>" for t, c in sorted(mix.items())]
    return ("<p>Questions written by the trained questioner (iter&lt;t&gt;/questions.parquet), by declared type.</p>"
            + table("qtype-mix", ["questions", *kinds, "total"], rows) + marks
            + img(plots.qtype_mix(mix, kinds), "question type mix"))


def _evolve_section(run: Run):
    """The run's evolve section as today's dataclass (for the texts that say what ran), or None when
    the manifest's config no longer loads (an old run): the report is drawn all the same."""
    try:
        return config_from_manifest(run.config).evolve
    except Exception:  # noqa: BLE001 -- a view of the run must never fail on its config
        return None


def labels(run: Run) -> str:
    ev = run.evolve
    lo, hi = ev.get("band_low", 0.25), ev.get("band_high", 0.75)
    m = ev.get("label_samples")
    hists, marks = {}, []
    for t, it in run.iterations.items():
        if not t:
            continue
        if it.labels is None:
            marks.append(missing(run, stage_name(t, "labels"), f"silver labels of iteration {t}"))
            continue
        hists[t] = Counter(float(r["agreement"]) for r in it.labels
                           if r.get("label") is not None and r.get("agreement") is not None)
    section = _evolve_section(run)
    bands = {t: section.band(t) if section is not None else (lo, hi) for t in hists}  # each round's own band
    cs = sorted({c for h in hists.values() for c in h})
    rows = [f'<tr data-iter="{t}">{text(_label(t))}' + "".join(num(f"{c:.3f}", h.get(c, 0), data_c=repr(c)) for c in cs)
            + num("in_band", sum(v for c, v in h.items() if bands[t][0] <= c <= bands[t][1])) + num("labeled", sum(h.values()))
            + "</tr>" for t, h in sorted(hists.items())]
    rule = (f"from {modes.labellers(section)}; {modes.labelling_rule(section)}" if section is not None
            else f"the majority answer is the silver label and c = its share; kept when c is in [{fmt(lo)}, {fmt(hi)}]")
    out = [f"<p>m = {escape(str(m or '?'))} samples per valid question {escape(rule)} (evolve.band_low/high).</p>"]
    if hists:
        out += [table("agreement", ["agreement c", *(f"{c:.3f}" for c in cs), "in band", "labeled"], rows),
                img(plots.agreement(hists, (lo, hi), len(run.iterations) - 1), "agreement distribution")]
    out += marks
    out.append("<h3>Pseudo-label accuracy (Table 2)</h3>" + label_accuracy(run))
    return "".join(out)


LABEL_KEYS = (("n_labeled", "labeled"), ("n_kept", "kept"), ("n_with_truth", "with true answer"),
              ("label_accuracy", "silver-label accuracy"), ("label_accuracy_kept", "silver-label accuracy (kept)"),
              ("questioner_answer_accuracy", "questioner's own answer accuracy"), ("mean_agreement", "mean agreement"))


def label_accuracy(run: Run) -> str:
    rows, marks = [], []
    for t, stage in run.phases("labels"):
        info = run.info(stage)
        if info:
            rules = "; ".join(f"{rule}: {n['labeled']} labelled, {n['kept']} kept" for rule, n in info.get("by_rule", {}).items())
            rows.append(f'<tr data-iter="{t}" data-stage="{stage}">{text(_label(t))}{text(rules or "-")}'
                        + "".join(num(k, info.get(k)) for k, _ in LABEL_KEYS) + "</tr>")
        else:
            rows.append(f'<tr data-iter="{t}" data-stage="{stage}" class="missing" data-missing="{stage}">{text(_label(t))}'
                        f'<td colspan="{len(LABEL_KEYS) + 1}">not reached</td></tr>')
            marks.append(missing(run, stage, f"pseudo-label accuracy of iteration {t}"))
    return ("<p>Share of silver labels that match the world oracle's answer (questions whose image is a world scene "
            "and whose text parses in the grammar); from manifest.json. Never used for training.</p>"
            + table("label-accuracy", ["iteration", "rule (agreement)", *(h for _, h in LABEL_KEYS)], rows) + "".join(marks))


def reasoner(run: Run) -> str:
    trained = {t: run.info(stage_name(t, "reasoner")).get("train_rows")
               for t in run.iterations if t and run.done(stage_name(t, "reasoner"))}
    rows_info = "".join(f"<li>{stage_name(t, 'reasoner')}: trained on {escape(fmt(n))} kept questions</li>" for t, n in trained.items())
    section = _evolve_section(run)
    how = (f"<p>The reasoner's objective: {escape(modes.objective(section))}.</p>" if section is not None else "")
    grpo = section is None or section.reasoner_objective == "grpo"
    return (how + ("<p>Reasoner GRPO per step (metrics.jsonl) on the kept silver labels: accuracy reward (answer equals "
                   "the label) and format reward (think + boxed).</p>" if grpo else
                   "<p>Its SFT losses are in metrics.jsonl, one record per logged step and member.</p>")
            + (f"<ul>{rows_info}</ul>" if rows_info else "")
            + _curves(run, "reasoner", REASONER_PANELS, "reasoner reward curves") + _step_tables(run, "reasoner"))


def _thumb(data: bytes | None) -> str | None:
    if not data:
        return None
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)  # noisy scenes and photos: ~10x smaller than PNG
    except Exception:  # noqa: BLE001 - an undecodable image is shown as such
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mark(ok) -> str:
    if ok is None:
        return ""
    return ' <span class="ok">✓</span>' if ok else ' <span class="bad">✗</span>'


def _card(t: int, r: dict) -> str:
    uri = _thumb(r.get("image_png"))
    picture = img(uri, r.get("image_id", ""), "thumb") if uri else '<p class="bad">image unreadable</p>'
    labeled = "label" in r
    if not r.get("valid"):
        kind, body = "invalid", (f"<dt>invalid</dt><dd>{escape(str(r.get('reason') or r.get('skip_reason') or '?'))}</dd>"
                                 f"</dl><pre>{escape(str(r.get('raw') or '')[:400])}</pre><dl>")
    else:
        kind = "kept" if r.get("kept") else "outside"
        if labeled and r.get("label") is not None:
            band = "kept" if r.get("kept") else "not kept"
            silver = (f"{escape(str(r['label']))}{_mark(r.get('label_correct'))} "
                      f"<span class='muted'>(c = {escape(fmt(r.get('agreement')))}, {band})</span>")
        elif labeled:
            silver = f"<span class='muted'>none — {escape(str(r.get('skip_reason') or '?'))}</span>"
        else:
            kind, silver = "outside", "<span class='muted'>not labeled yet</span>"
        truth = r.get("true_answer")
        truth = escape(str(truth)) if truth is not None else "<span class='muted'>unknown</span>"
        body = (f"<dt>type</dt><dd>{escape(str(r.get('qtype') or '?'))}</dd>"
                f"<dt>questioner's answer</dt><dd>{escape(str(r.get('questioner_answer')))}"
                f"{_mark(r.get('questioner_correct'))}</dd>"
                f"<dt>silver label</dt><dd>{silver}</dd><dt>true answer</dt><dd>{truth}</dd>")
    question = escape(str(r.get("question"))) if r.get("question") else "<span class='muted'>(no question parsed)</span>"
    flaw = degenerate(r.get("question")) if r.get("valid") else None
    if flaw:
        question += f"<div class='flag bad'>⚠ degenerate: {escape(flaw)}</div>"
    attrs = _attrs({"class": f"card {kind}" + (" degenerate" if flaw else ""), "data_iter": t, "data_row": r.get("row"),
                    "data_agreement": _value(r.get("agreement")), "data_degenerate": flaw})
    return (f"<figure{attrs}>"
            f"{picture}<figcaption><div class='q'>{question}</div><dl>{body}"
            f"<dt>image</dt><dd class='muted'>{escape(str(r.get('image_id', '?')))}</dd></dl></figcaption></figure>")


def gallery(run: Run) -> str:
    out = ["<p>A few generated questions per iteration (mostly kept ones, some outside the band, some invalid). "
           "✓/✗ compare with the world oracle's true answer where it is known.</p>"]
    for t, it in run.iterations.items():
        if not t:
            continue
        if not it.gallery:
            out.append(f"<p class='muted'>{stage_name(t, 'questions')} wrote no questions.</p>" if it.questions is not None
                       else missing(run, stage_name(t, "questions"), f"generated questions of iteration {t}"))
            continue
        note = "" if it.labels is not None else missing(run, stage_name(t, "labels"), f"silver labels of iteration {t}")
        rows = [r for r in (it.labels or it.questions or []) if r.get("valid")]
        n_bad = sum(degenerate(r.get("question")) is not None for r in rows)
        note += (f"<p id='degenerate-{t}' data-value='{n_bad}' class='{'bad' if n_bad else 'muted'}'>{n_bad} of "
                 f"{len(rows)} valid questions are degenerate (a colour named twice, or duplicate options).</p>")
        out.append(f"<h3>{_label(t)}</h3>{note}<div class='gallery' id='gallery-{t}'>"
                   + "".join(_card(t, r) for r in it.gallery) + "</div>")
    return "".join(out)


def skipped(run: Run) -> str:
    rows = []

    def add(stage: str, reason: str, count) -> None:
        rows.append(f'<tr data-stage="{escape(stage)}" data-reason="{escape(reason)}">{text(stage)}{text(reason)}'
                    + num("count", count) + "</tr>")

    for t, it in run.iterations.items():
        for kind in ITERATION_STAGES:
            stage = stage_name(t, kind)
            info = run.info(stage)
            for reason, count in sorted((info.get("skipped_images") or {}).items()):
                add(stage, f"image skipped: {reason}", count)
            sk = info.get("skipped")
            if isinstance(sk, dict):
                for reason, count in sorted(sk.items()):
                    add(stage, reason, count)
            elif sk:
                add(stage, f"stage skipped: {sk}", None)
        for name, b in sorted(((it.bench or {}).get("benchmarks") or {}).items()):
            for reason, count in sorted((b.get("skipped") or {}).items()):
                add(f"{iteration_folder(t)}/bench/{name}", reason, count)
    if not rows:
        return "<p id='skipped-none'>Nothing was skipped in the stages done so far.</p>"
    return ("<p>Counts per reason from manifest.json (image sources, questions that could not be labeled, stages "
            "skipped by an ablation or for lack of data) and benchmark summaries.</p>"
            + table("skipped", ["stage", "reason", "count"], rows))


def config(run: Run) -> str:
    command = run.manifest.get("command") or []
    cmd = shlex.join(map(str, command)) if command else "(not recorded)"
    cfg = json.dumps(run.config, indent=2, sort_keys=True)
    return (f"<h3>Command</h3><pre id='command'>{escape(cmd)}</pre>"
            f"<h3>Config (manifest.json)</h3><pre id='config'>{escape(cfg)}</pre>")


SECTIONS: tuple[tuple[str, str, Callable[[Run], str]], ...] = (
    ("overview", "Where the run stands", overview),
    ("accuracy-section", "Held-out accuracy", accuracy),
    ("questioner", "Questioner training", questioner),
    ("labels", "Silver labels", labels),
    ("reasoner", "Reasoner training", reasoner),
    ("gallery", "Generated questions", gallery),
    ("skipped-section", "Skipped, and why", skipped),
    ("config-section", "Config and command", config),
)


def _json_script(obj) -> str:
    data = json.dumps(obj, sort_keys=True, default=str)
    return data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(run: Run) -> str:
    """The whole page. A section that fails renders as an error box; the page itself always renders."""
    body = []
    for sid, title, fn in SECTIONS:
        try:
            html = fn(run)
        except Exception as e:  # noqa: BLE001 - a report must never take the run down with it
            html = f'<p class="error" data-section-error="{sid}">This section failed to render: {escape(repr(e))}</p>'
        body.append(f'<section id="{sid}"><h2>{escape(title)}</h2>{html}</section>')
    stages = {s: {k: v for k, v in i.items() if k != "image_ids"} for s, i in run.stages.items() if isinstance(i, dict)}
    data = {"state": run.state, "next_stage": run.current, "stages": stages, "command": run.manifest.get("command"),
            "config": run.config, "problems": run.problems}
    name = escape(run.root.resolve().name)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>visplay report — {name}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body data-run-state='{run.state}'><h1>visplay run <code>{name}</code></h1>{''.join(body)}"
            f"<script type='application/json' id='report-data'>{_json_script(data)}</script>"
            f"<script>{LOAD_CHECK}</script></body></html>\n")


def build_report(run_dir: str | Path) -> str:
    return render(load_run(run_dir))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` (default RUN/report.html) atomically; returns its path."""
    out = Path(run_dir) / "report.html" if out is None else Path(out)
    if Path(run_dir, "manifest.json").is_file():  # a bad run dir is a StatusError from build_report
        check_writable_dir(out.parent)  # a WriteError naming the folder before the plots are drawn
    return atomic_write_text(out, build_report(run_dir))
