"""Benchmark evaluation: generate with the reasoner prompt, grade by rule and judge, write the table.

    visplay eval --model PATH --benchmarks mmmu,mm-vet,world --data-dir DIR --out RUN_DIR \
        [--judge-url http://host:8000/v1 --judge-model NAME]      # key in $VISPLAY_JUDGE_API_KEY
    visplay eval --compare RUN_A RUN_B ...                          # paper-style table, no generation

The run reads in a straight line (``evaluate_benchmarks``): load every benchmark (all input errors
surface here) -> check the judge if it will be needed -> generate what is not cached yet, batched,
greedy and seeded, through the ``Sampler`` interface -> grade every item by rule, and by the judge
where the benchmark is judged -> write ``items.jsonl``, ``summary.json`` and ``summary.md``.

Results are joined by item id, never by position: a row whose image fails to decode is recorded
as skipped with its reason and every other prediction stays with its own question. Completions are
appended to ``RUN_DIR/generations.jsonl`` after each batch under a fingerprint of (model, sampling,
prompt, image size), so an interrupted run resumes where it stopped; judge verdicts are cached in
``RUN_DIR/judge_cache.jsonl``. The summary files are written atomically and hold no timestamps,
so two runs on the same inputs give byte-identical tables. Inputs are only ever read.

Settings: the config tree's ``bench`` and ``judge`` sections; the subcommand: `visplay/cli/eval.py`.
Test: ``pytest -q tests/test_benchmarks.py tests/test_judge.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visplay.answers import Grader, extract, rate
from visplay.data.images import ImageError, check_pixel_range, decode_image
from visplay.eval.benchmarks import Benchmark, Item, Loaded, SkippedItem, registry
from visplay.eval.judge import JudgeClient
from visplay.eval.store import AppendLog
from visplay.io import atomic_write_json, atomic_write_text
from visplay.roles.prompts import REASONER_INSTRUCTION, reasoner_messages
from visplay.sampling.base import Prompt, Sampler, SamplingParams
from visplay.settings import ConfigError, Sampling


#: The reference evaluation's data.min_pixels / max_pixels (benchmark images are resized into it).
PAPER_MIN_PIXELS = 262_144
PAPER_MAX_PIXELS = 4_194_304


@dataclass
class BenchConfig(Sampling):
    """Benchmark evaluation (`visplay eval --benchmarks`): greedy and seeded by default."""

    SECTION = "bench"
    temperature: float = 0.0
    top_k: int = 0
    max_new_tokens: int = 2048
    batch_size: int = 16  # items per generate() call (one GPU batch); completions are saved after each
    limit: int | None = None  # first N items of every benchmark (smoke runs)
    min_pixels: int | None = PAPER_MIN_PIXELS
    max_pixels: int | None = PAPER_MAX_PIXELS
    grader_timeout: float = 10.0  # seconds per symbolic comparison before its worker is killed
    grader_workers: int = 1  # 0 = compare in-process, no timeout

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError(f"bench.batch_size and bench.limit must be >= 1, got {self.batch_size}, {self.limit}")
        if self.grader_timeout <= 0 or self.grader_workers < 0:
            raise ConfigError("bench.grader_timeout must be > 0 and bench.grader_workers >= 0")
        try:
            check_pixel_range(self.min_pixels, self.max_pixels)
        except ValueError as e:
            raise ConfigError(f"bench: {e}") from e


log = logging.getLogger(__name__)

METRICS = ("accuracy", "rule")


class EvalError(ValueError):
    """A benchmark evaluation cannot run or compare (bad settings, missing summaries)."""


@dataclass(frozen=True)
class EvalResult:
    rows: list[dict]
    summary: dict
    markdown: str


# ---------------------------------------------------------------- prompts and the generation store


def benchmark_messages(question: str, n_images: int) -> list[dict]:
    """The reasoner prompt (question, instruction, image slot) with one slot per image.

    >>> [c["type"] for c in benchmark_messages("Q?", 2)[0]["content"]]
    ['text', 'image', 'image']
    """
    messages = reasoner_messages(question)
    content = messages[0]["content"]
    text = [c for c in content if c.get("type") != "image"]
    return [{**messages[0], "content": text + [{"type": "image"}] * n_images}, *messages[1:]]


def generation_fingerprint(model_id: str, settings: BenchConfig) -> str:
    """What a cached completion depends on besides the item: model, sampling, prompt, image size."""
    blob = json.dumps({
        "model": model_id, "sampling": asdict(settings.params(1)), "prompt": benchmark_messages("{q}", 1),
        "instruction": REASONER_INSTRUCTION, "pixels": [settings.min_pixels, settings.max_pixels],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class GenerationStore:
    """Completions of one run in an append-only jsonl, valid only under the same fingerprint."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.log = AppendLog(path)
        self.fingerprint = fingerprint
        self.texts: dict[tuple[str, str], tuple[str, str]] = {}  # (benchmark, id) -> (digest, text)
        for r in self.log.read():
            if r.get("fp") == fingerprint and isinstance(r.get("prediction"), str):
                self.texts[(str(r.get("benchmark")), str(r.get("id")))] = (str(r.get("digest")), r["prediction"])

    def get(self, item: Item) -> str | None:
        hit = self.texts.get(item.key)
        return hit[1] if hit and hit[0] == item.digest else None

    def add(self, pairs: Sequence[tuple[Item, str]]) -> None:
        self.log.append({"fp": self.fingerprint, "benchmark": item.benchmark, "id": item.id, "digest": item.digest,
                         "prediction": text} for item, text in pairs)
        for item, text in pairs:
            self.texts[item.key] = (item.digest, text)


# ---------------------------------------------------------------- the evaluation


def evaluate_benchmarks(
    benchmarks: Sequence[Benchmark],
    data_dir: str | Path | None,
    out_dir: str | Path,
    sampler: Sampler | Callable[[], Sampler] | None,
    settings: BenchConfig = BenchConfig(),
    judge: JudgeClient | None = None,
    model_id: str = "model",
    meta: dict | None = None,
    progress: Callable[[str], None] = log.info,
) -> EvalResult:
    """Evaluate ``benchmarks`` and write the run directory; see the module docstring.

    ``sampler`` may be a factory (called only if something is left to generate, so a fully cached
    rerun never loads the model). Raises ``BenchmarkError``/``JudgeError``/``EvalError`` before any
    generation for problems with the inputs or the judge.
    """
    out = Path(out_dir)
    loads = {b.name: b.load(data_dir, settings.limit) for b in benchmarks}
    store = GenerationStore(out / "generations.jsonl", generation_fingerprint(model_id, settings))
    todo = {b.name: [i for i in loads[b.name].items if store.get(i) is None] for b in benchmarks}
    n_todo = sum(map(len, todo.values()))
    if judge is not None and _judge_may_be_needed(benchmarks, loads, todo, store, judge):
        judge.preflight()
    failures: dict[tuple[str, str], SkippedItem] = {}
    if n_todo:
        if sampler is None:
            raise EvalError(f"{n_todo} item(s) need generating but no model was given (--model)")
        lazy = _Lazy(sampler)
        progress(f"{n_todo} item(s) to generate; {sum(len(x.items) for x in loads.values()) - n_todo} cached")
        for b in benchmarks:
            _generate(b, todo[b.name], lazy, settings, store, failures, progress)
    with Grader(timeout=settings.grader_timeout, workers=settings.grader_workers) as grader:
        rows = [row for b in benchmarks for row in _grade_rows(b, loads[b.name], store, failures, grader)]
    if judge is not None:
        _judge_rows(rows, {b.name: b for b in benchmarks}, judge, progress)
    summary = summarize(rows, benchmarks, judge, {**(meta or {}), "model": model_id, "settings": asdict(settings),
                                                   "fingerprint": store.fingerprint})
    markdown = summary_markdown(summary)
    write_run(out, rows, summary, markdown)
    return EvalResult(rows, summary, markdown)


class _Lazy:
    """A sampler built on first use, so a run whose remaining items all fail to decode loads no model."""

    def __init__(self, sampler: Sampler | Callable[[], Sampler]) -> None:
        self._source = sampler
        self._sampler: Sampler | None = sampler if hasattr(sampler, "generate") else None  # type: ignore[assignment]
        self._error: BaseException | None = None

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[str]]:
        if self._error is not None:
            raise self._error  # a failed model load is not retried item by item
        if self._sampler is None:
            try:
                self._sampler = self._source()  # type: ignore[operator]
            except BaseException as e:
                self._error = e
                raise
        return self._sampler.generate(prompts, params)


def _judge_may_be_needed(benchmarks, loads, todo, store, judge: JudgeClient) -> bool:
    """True unless every judged item is already generated and its verdict cached (a pure rerun)."""
    for b in benchmarks:
        if not b.judged:
            continue
        if todo[b.name]:
            return True
        for item in loads[b.name].items:
            answer = extract(store.get(item)).answer
            if answer is not None and not judge.is_cached(b.question(item), item.answer, answer):
                return True
    return False


def _decode(item: Item, benchmark: Benchmark, settings: BenchConfig) -> tuple[Any, ...] | SkippedItem:
    lo, hi = (settings.min_pixels, settings.max_pixels) if benchmark.resize_images else (None, None)
    try:
        return tuple(decode_image(img, where=f"{item.benchmark}/{item.id}", min_pixels=lo, max_pixels=hi)
                     for img in item.images)
    except ImageError as e:
        return SkippedItem(item.id, item.benchmark, f"image_{e.reason}", str(e))


def _generate(benchmark: Benchmark, items: list[Item], sampler: Sampler, settings: BenchConfig,
              store: GenerationStore, failures: dict, progress: Callable[[str], None]) -> None:
    params = settings.params(1)
    for start in range(0, len(items), settings.batch_size):
        ready: list[tuple[Item, Prompt]] = []
        for item in items[start : start + settings.batch_size]:
            images = _decode(item, benchmark, settings)
            if isinstance(images, SkippedItem):
                failures[item.key] = images
                continue
            ready.append((item, Prompt(benchmark_messages(benchmark.question(item), len(images)), images)))
        if ready:
            store.add(_complete(ready, sampler, params, failures))
        progress(f"{benchmark.name}: {min(start + settings.batch_size, len(items))}/{len(items)} generated")


def _complete(ready: list[tuple[Item, Prompt]], sampler: Sampler, params: SamplingParams,
              failures: dict) -> list[tuple[Item, str]]:
    """One batch; if it raises, each item alone, so one bad item is skipped, not the batch.

    If every item fails alone too, the fault is not the items': the first error is raised."""
    try:
        return _aligned(ready, sampler.generate([p for _, p in ready], params))
    except Exception as batch_error:  # noqa: BLE001 - isolated below, re-raised if systemic
        if len(ready) == 1:
            raise
        log.warning("batch of %d failed (%s: %s); retrying items one by one", len(ready),
                    type(batch_error).__name__, batch_error)
        done: list[tuple[Item, str]] = []
        errors: list[tuple[Item, Exception]] = []
        for item, prompt in ready:
            try:
                done += _aligned([(item, prompt)], sampler.generate([prompt], params))
            except Exception as e:  # noqa: BLE001
                errors.append((item, e))
        if not done:
            raise batch_error
        for item, e in errors:
            failures[item.key] = SkippedItem(item.id, item.benchmark, "generation_error", f"{type(e).__name__}: {e}"[:300])
        return done


def _aligned(ready: list[tuple[Item, Prompt]], outputs: list[list[str]]) -> list[tuple[Item, str]]:
    if len(outputs) != len(ready):
        raise EvalError(f"sampler returned {len(outputs)} result(s) for {len(ready)} prompt(s)")
    return [(item, out[0] if out else "") for (item, _), out in zip(ready, outputs)]


_ROW_KEYS = ("id", "benchmark", "category", "question", "reference", "status", "skip_reason", "skip_detail",
             "prediction", "extracted", "extract_reason", "rule_correct", "rule_reason", "judge_correct",
             "judge_reason", "correct", "graded_by")


def _row(**values: Any) -> dict:
    """A result row with every key present (None where it does not apply)."""
    return {k: values.get(k) for k in _ROW_KEYS}


def _grade_rows(b: Benchmark, loaded: Loaded, store: GenerationStore, failures: dict, grader: Grader) -> list[dict]:
    rows = []
    for item in loaded.items:
        base = {"id": item.id, "benchmark": b.name, "category": item.category, "question": b.question(item),
                "reference": item.answer}
        text = store.get(item)
        if item.key in failures or text is None:
            skip = failures.get(item.key) or SkippedItem(item.id, b.name, "not_generated")
            rows.append(_row(**base, status="skipped", skip_reason=skip.reason, skip_detail=skip.detail))
            continue
        extraction = extract(text)
        verdict = b.grade(item, extraction.answer, grader)
        rows.append(_row(**base, status="scored", prediction=text, extracted=extraction.answer,
                         extract_reason=extraction.reason, rule_correct=verdict.correct, rule_reason=verdict.reason,
                         correct=verdict.correct, graded_by="rule"))
    for skip in loaded.skipped:
        rows.append(_row(id=skip.id, benchmark=b.name, status="skipped", skip_reason=skip.reason, skip_detail=skip.detail))
    return rows


def _judge_rows(rows: list[dict], by_name: dict[str, Benchmark], judge: JudgeClient,
                progress: Callable[[str], None]) -> None:
    asked = [r for r in rows if r["status"] == "scored" and by_name[r["benchmark"]].judged]
    with_answer = [r for r in asked if r["extracted"] is not None]
    verdicts = judge.judge_many([(r["question"], r["reference"], r["extracted"]) for r in with_answer])
    progress(f"judge: {len(with_answer)} verdict(s), {sum(v.cached for v in verdicts)} from the cache")
    for r, v in zip(with_answer, verdicts):
        r.update(judge_correct=v.correct, judge_reason=v.reason, correct=v.correct, graded_by="judge")
    for r in asked:
        if r["extracted"] is None:
            r.update(judge_correct=False, judge_reason="no_boxed_answer", correct=False, graded_by="judge")


# ---------------------------------------------------------------- summary and tables


def summarize(rows: list[dict], benchmarks: Sequence[Benchmark], judge: JudgeClient | None, meta: dict) -> dict:
    """Per-benchmark accuracy (final, rule-based, judge), skips with reasons, and the averages."""
    per: dict[str, dict] = {}
    for b in benchmarks:
        mine = [r for r in rows if r["benchmark"] == b.name]
        scored = [r for r in mine if r["status"] == "scored"]
        cats: dict[str, list[dict]] = defaultdict(list)
        for r in scored:
            if r.get("category") is not None:
                cats[r["category"]].append(r)
        per[b.name] = {
            "title": b.label, "answer_type": b.answer_type, "in_average": b.in_average,
            "graded_by": "judge" if (judge is not None and b.judged) else "rule",
            "n_items": len(mine), "n_scored": len(scored), "n_skipped": len(mine) - len(scored),
            "skipped": dict(sorted(Counter(r["skip_reason"] for r in mine if r["status"] == "skipped").items())),
            "correct": sum(bool(r["correct"]) for r in scored),
            "accuracy": rate(scored, "correct"), "rule_accuracy": rate(scored, "rule_correct"),
            "judge_accuracy": rate(scored, "judge_correct"),
            "rule_reasons": dict(sorted(Counter(r["rule_reason"] for r in scored).items())),
            "by_category": {c: {"n": len(rs), "accuracy": rate(rs, "correct")} for c, rs in sorted(cats.items())},
        }
    counted = [n for n, s in per.items() if s["in_average"] and s["n_scored"]]

    def mean(key: str) -> float | None:
        values = [per[n][key] for n in counted]
        return sum(values) / len(values) if values else None

    return {"order": [b.name for b in benchmarks], "benchmarks": per,
            "average": {"accuracy": mean("accuracy"), "rule": mean("rule_accuracy")}, "average_over": counted,
            "judge": judge.describe() if judge is not None else None, "meta": meta}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def paper_table(runs: Sequence[tuple[str, dict[str, float | None], float | None]], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table: one row per run (label, {benchmark: accuracy}, average), columns in order."""
    head = ["run", *(label for _, label in columns), "Average"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for label, values, average in runs:
        lines.append("| " + " | ".join([label, *(_pct(values.get(n)) for n, _ in columns), _pct(average)]) + " |")
    return "\n".join(lines)


def summary_markdown(summary: dict) -> str:
    """The run's tables: paper-style (final and rule-based rows), details, skips. Deterministic."""
    per, order = summary["benchmarks"], summary["order"]
    cols = [(n, per[n]["title"]) for n in order]
    judge = summary.get("judge")
    runs = [("rule-based", {n: per[n]["rule_accuracy"] for n in order}, summary["average"]["rule"])]
    if judge:
        runs.insert(0, (f"judge ({judge['model']})", {n: per[n]["accuracy"] for n in order}, summary["average"]["accuracy"]))
    meta = summary.get("meta", {})
    settings = meta.get("settings", {})
    judged_by = f"{judge['model']} at {judge['url']} (prompt {judge['prompt_sha']})" if judge else "none (rule-based only)"
    averaged = ", ".join(per[n]["title"] for n in summary["average_over"]) or "nothing"
    lines = [
        "# Benchmark evaluation", "",
        f"model: `{meta.get('model', '?')}` · temperature {settings.get('temperature')} · "
        f"max_new_tokens {settings.get('max_new_tokens')} · seed {settings.get('seed')}",
        f"judge: {judged_by}", "",
        f"Accuracy (%); the average is over {averaged}. Judged benchmarks use the judge's verdict in the first row; "
        "the rule-based row never does.", "",
        paper_table(runs, cols), "",
        "| benchmark | answer type | graded by | items | scored | skipped | rule | judge | final |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in order:
        s = per[n]
        lines.append(f"| {s['title']} | {s['answer_type']} | {s['graded_by']} | {s['n_items']} | {s['n_scored']} | "
                     f"{s['n_skipped']} | {_pct(s['rule_accuracy'])} | {_pct(s['judge_accuracy'])} | {_pct(s['accuracy'])} |")
    skips = [(per[n]["title"], reason, count) for n in order for reason, count in per[n]["skipped"].items()]
    if skips:
        lines += ["", "Skipped items (not counted in accuracy):", ""]
        lines += [f"- {title}: {reason} × {count}" for title, reason, count in skips]
    return "\n".join(lines) + "\n"


def write_run(out: Path, rows: list[dict], summary: dict, markdown: str) -> None:
    """items.jsonl, summary.json, summary.md, each written atomically."""
    atomic_write_text(out / "items.jsonl", "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", markdown)


def compare_runs(run_dirs: Sequence[str | Path], metric: str = "accuracy") -> str:
    """The paper-style table of stored runs: rows = runs, columns = benchmarks + average."""
    if metric not in METRICS:
        raise EvalError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    summaries = []
    for d in run_dirs:
        path = Path(d) / "summary.json" if Path(d).is_dir() else Path(d)
        try:
            summaries.append((Path(d), json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{d}: no readable summary.json ({e}); "
                            f"run `visplay eval --benchmarks ... --out {d}` first") from None
    known = list(registry())
    names: list[str] = []
    for _, s in summaries:
        names += [n for n in s.get("order", []) if n not in names]
    names.sort(key=lambda n: known.index(n) if n in known else len(known))
    titles = {n: s["benchmarks"][n].get("title", n) for _, s in summaries for n in s.get("benchmarks", {})}
    labels = [p.name or str(p) for p, _ in summaries]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p, _ in summaries]
    key = "accuracy" if metric == "accuracy" else "rule_accuracy"
    runs = [(label, {n: b[key] for n, b in s.get("benchmarks", {}).items()}, s.get("average", {}).get(metric))
            for label, (_, s) in zip(labels, summaries)]
    table = paper_table(runs, [(n, titles[n]) for n in names])
    notes = [f"metric: {metric} (judge verdicts where a run used a judge)" if metric == "accuracy" else "metric: rule-based"]
    if len({tuple(s.get("average_over", [])) for _, s in summaries}) > 1:
        notes.append("note: the runs average over different benchmark sets; compare columns, not averages")
    judges = {json.dumps(s.get("judge"), sort_keys=True) for _, s in summaries}
    if metric == "accuracy" and len(judges) > 1:
        notes.append("note: the runs used different judges (or none); judged columns are not comparable")
    return table + "\n\n" + "\n".join(notes) + "\n"


def model_identity(path: str | Path) -> str:
    """The model's path plus its weight files' names, sizes and mtimes: retraining in place changes it."""
    p = Path(path).resolve()
    stamps = sorted(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in p.glob("*.safetensors"))
    return f"{p}|" + hashlib.sha256("|".join(stamps).encode()).hexdigest()[:12]
