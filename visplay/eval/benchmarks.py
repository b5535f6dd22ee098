"""The benchmark registry: one small frozen entry per benchmark, and the parquet loader they share.

A benchmark is read from ``DATA_DIR/<name>.parquet`` or from every ``*.parquet`` under
``DATA_DIR/<name>/`` (recursively, sorted; e.g. a hub download's ``data/test-00000-of-00001.parquet``),
in the layout of the paper's benchmark collection:

* ``problem`` (str), ``answer`` (str or number): required;
* ``images`` (a list of images) or ``image`` (one): each image as bytes, a path (relative to the
  parquet file's folder) or a ``{"bytes", "path"}`` struct, as ``datasets`` writes them;
* optional: ``id`` (unique; otherwise ``<name>/<file stem>:<row>``), ``options`` (a list, or its
  string form as MMMU stores it; appended to the question unless the problem already lists them),
  ``category`` (for per-category accuracy).

An entry declares its answer type (``visplay.answers.ANSWER_TYPES``) and whether an LLM judge
grades it when one is configured. Adding a benchmark is one line in ``_ENTRIES``; users can also
pass ``pkg.mod:obj`` or ``path/file.py:obj`` naming a ``Benchmark`` (or a callable returning one).
The ``world`` entry generates held-out procedural-world questions instead of reading files, so
the same table holds world accuracy (it is left out of the average).

Problems found before generation (unknown name, missing file or column, empty file, duplicate
ids) raise ``BenchmarkError``; faults of single rows (no problem, no answer) become
``SkippedItem``s with a reason. Images stay undecoded until generation.
Test: ``pytest -q tests/test_benchmarks.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from visplay.answers import Grader
from visplay.answers import ANSWER_TYPES, LETTERS, RuleVerdict, grade
from visplay.eval.world import eval_items
from visplay.worlds.questions import FAMILIES
from visplay.worlds.questions import grade as world_grade
from visplay.worlds.scene import WorldConfig
from visplay.worlds.trace import scene_id

REQUIRED_COLUMNS = ("problem", "answer")
IMAGE_COLUMNS = ("images", "image")
OPTIONAL_COLUMNS = ("id", "options", "category")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class BenchmarkError(ValueError):
    """A benchmark cannot be evaluated at all (found before any generation starts)."""


@dataclass(frozen=True)
class Item:
    """One question. ``images`` hold raw data (bytes, path, dict or PIL image), decoded later."""

    id: str
    benchmark: str
    problem: str
    answer: str
    images: tuple[Any, ...] = ()
    options: tuple[str, ...] = ()
    category: str | None = None
    digest: str = ""  # content hash: a cached generation is reused only for the same content

    @property
    def key(self) -> tuple[str, str]:
        return (self.benchmark, self.id)


@dataclass(frozen=True)
class SkippedItem:
    """A row that could not be asked; ``reason`` is a stable key for counting."""

    id: str
    benchmark: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Loaded:
    items: list[Item]
    skipped: list[SkippedItem]


@dataclass(frozen=True)
class Benchmark:
    """A parquet benchmark in the collection's layout; see the module docstring.

    name: lower-case file/CLI name; answer_type: how ``grade`` reads answers; judged: graded by
    the LLM judge when ``--judge-url`` is given (rule-based verdicts are always recorded too);
    in_average: counted in the table's average; title: column header in tables; resize_images:
    bring images into the run's pixel range.
    """

    name: str
    answer_type: str
    judged: bool = False
    in_average: bool = True
    title: str = ""
    resize_images: bool = True  # to the run's --min-pixels/--max-pixels

    answer_types: ClassVar[tuple[str, ...]] = ANSWER_TYPES

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise BenchmarkError(f"benchmark name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if self.answer_type not in self.answer_types:
            raise BenchmarkError(
                f"benchmark {self.name}: answer_type {self.answer_type!r} is not one of {', '.join(self.answer_types)}"
            )

    @property
    def label(self) -> str:
        return self.title or self.name

    # -- reading
    def files(self, data_dir: str | Path | None) -> list[Path]:
        """``DATA_DIR/<name>.parquet`` or the sorted ``*.parquet`` under ``DATA_DIR/<name>/``."""
        if data_dir is None:
            raise BenchmarkError(f"benchmark {self.name} is read from files: pass --data-dir DIR")
        root = Path(data_dir)
        if not root.is_dir():
            raise BenchmarkError(f"--data-dir {root} is not a directory")
        single, folder = root / f"{self.name}.parquet", root / self.name
        shards = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
        if single.is_file() and shards:
            raise BenchmarkError(f"benchmark {self.name}: both {single} and {folder}/ exist; keep one")
        if single.is_file():
            return [single]
        if shards:
            return shards
        raise BenchmarkError(
            f"benchmark {self.name}: neither {single} nor any *.parquet under {folder}/ exists "
            "(see docs/evaluation.md for where to get the files)"
        )

    def load(self, data_dir: str | Path | None, limit: int | None = None) -> Loaded:
        """Every row as an ``Item`` (or a ``SkippedItem``), the first ``limit`` rows if given."""
        items: list[Item] = []
        skipped: list[SkippedItem] = []
        for path in self.files(data_dir):
            remaining = None if limit is None else limit - len(items) - len(skipped)
            if remaining is not None and remaining <= 0:
                break
            for row_id, row in _read_rows(path, remaining):
                got = self.make_item(row_id or f"{self.name}/{path.stem}:{row['__row']}", row, path.parent)
                (items if isinstance(got, Item) else skipped).append(got)
        if not items and not skipped:
            raise BenchmarkError(f"benchmark {self.name}: {', '.join(map(str, self.files(data_dir)))} has no rows")
        _check_unique(self.name, [x.id for x in items] + [x.id for x in skipped])
        return Loaded(items, skipped)

    def make_item(self, item_id: str, row: dict, folder: Path) -> Item | SkippedItem:
        """One parquet row as an ``Item``; a row without a problem or an answer is skipped."""
        if row.get("id", "") is None:
            return SkippedItem(item_id, self.name, "missing_id", "the id column is null in this row")
        problem, answer = row.get("problem"), row.get("answer")
        if not isinstance(problem, str) or not problem.strip():
            return SkippedItem(item_id, self.name, "missing_problem", "empty or null problem")
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            return SkippedItem(item_id, self.name, "missing_answer", "empty or null answer")
        images = _image_list(row.get("images", row.get("image")), folder)
        options = _options(row.get("options"))
        category = row.get("category")
        answer_text = _answer_text(answer)
        return Item(item_id, self.name, problem, answer_text, images, options,
                    None if category is None else str(category), _digest(problem, answer_text, options, images))

    # -- asking and grading
    def question(self, item: Item) -> str:
        """The text the reasoner sees: the problem, plus the options unless it already lists them."""
        if not item.options or all(opt.strip() in item.problem for opt in item.options):
            return item.problem
        lines = [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(item.options[: len(LETTERS)])]
        return item.problem.rstrip() + "\nOptions:\n" + "\n".join(lines)

    def grade(self, item: Item, answer: str | None, grader: Grader | None = None) -> RuleVerdict:
        """Rule-based verdict for the extracted ``answer`` (None when there was no box)."""
        return grade(answer, item.answer, self.answer_type, item.options, grader)


@dataclass(frozen=True)
class WorldBenchmark(Benchmark):
    """Held-out procedural-world questions (``visplay.worlds``), graded by the world's own oracle."""

    name: str = "world"
    answer_type: str = "world"
    in_average: bool = False
    title: str = "World"
    resize_images: bool = False  # the world's native cells are one vision token each
    split: str = "heldout"
    n: int = 500
    seed: int = 0
    world: Any = None  # a visplay.worlds.scene.WorldConfig; None = the default world
    families: tuple[str, ...] = ()  # empty = every family

    answer_types: ClassVar[tuple[str, ...]] = ("world",)

    def files(self, data_dir: str | Path | None) -> list[Path]:
        return []

    def load(self, data_dir: str | Path | None, limit: int | None = None) -> Loaded:
        n = self.n if limit is None else min(self.n, limit)
        if n < 1:
            raise BenchmarkError(f"benchmark world: n must be >= 1, got {n}")
        pairs = eval_items(self.split, n, self.world or WorldConfig(), tuple(self.families or FAMILIES), self.seed)
        items = [
            Item(scene_id(scene), self.name, q.text, q.answer, (scene.render(),), (), q.family,
                 _digest(q.text, q.answer, (), (f"{scene_id(scene)}:{self.world!r}",)))
            for scene, q in pairs
        ]
        return Loaded(items, [])

    def grade(self, item: Item, answer: str | None, grader: Grader | None = None) -> RuleVerdict:
        ok = world_grade(item.problem, answer, item.answer)
        return RuleVerdict(ok, "world_match" if ok else ("no_boxed_answer" if answer is None else "world_mismatch"))


# ---------------------------------------------------------------- the registry

#: The seven benchmarks of the paper's main table, in its column order.
PAPER_BENCHMARKS = ("mmmu", "mm-vet", "realworldqa", "visnumbench", "mathverse", "mathvision", "hallusionbench")

_ENTRIES: tuple[Benchmark, ...] = (
    Benchmark("mmmu", "option", judged=True, title="MMMU"),  # a few open questions: number/free fallback
    Benchmark("mm-vet", "free", judged=True, title="MM-Vet"),
    Benchmark("realworldqa", "option", judged=True, title="RealWorldQA"),
    Benchmark("visnumbench", "option", title="VisNumBench"),
    Benchmark("mathverse", "number", judged=True, title="MathVerse"),
    Benchmark("mathvision", "number", judged=True, title="MATH-Vision"),
    Benchmark("hallusionbench", "yesno", title="HallusionBench"),
    WorldBenchmark(),
)


def registry() -> dict[str, Benchmark]:
    """Name -> entry for every built-in benchmark (a fresh dict; entries are frozen)."""
    return {b.name: b for b in _ENTRIES}


def resolve_benchmarks(spec: str | Sequence[str]) -> list[Benchmark]:
    """Entries for ``"mmmu,mm-vet,world"``-style specs; ``all`` = the paper's seven; ``pkg.mod:obj`` imports.

    >>> [b.name for b in resolve_benchmarks("mmmu, world,mmmu")]
    ['mmmu', 'world']
    """
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p and p.strip()]
    if not parts:
        raise BenchmarkError("no benchmarks given; e.g. --benchmarks mmmu,mm-vet or --benchmarks all")
    known = registry()
    chosen: dict[str, Benchmark] = {}
    for part in parts:
        if ":" in part:
            entries = [load_benchmark(part)]
        elif part.lower() == "all":
            entries = [known[n] for n in PAPER_BENCHMARKS]
        elif part.lower() in known:
            entries = [known[part.lower()]]
        else:
            raise BenchmarkError(
                f"unknown benchmark {part!r}; known: {', '.join(known)}, 'all', or an import path pkg.mod:obj"
            )
        for entry in entries:
            chosen.setdefault(entry.name, entry)
    return list(chosen.values())


def load_benchmark(path: str) -> Benchmark:
    """The ``Benchmark`` at ``pkg.mod:obj`` or ``file.py:obj`` (a callable is called with no arguments)."""
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        raise BenchmarkError(f"benchmark import path {path!r} must look like pkg.mod:obj or file.py:obj")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None or not Path(module_name).is_file():
                raise BenchmarkError(f"benchmark file {module_name} does not exist")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except BenchmarkError:
        raise
    except Exception as e:  # ImportError, AttributeError, errors inside the user's module
        raise BenchmarkError(f"cannot import benchmark {path!r}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, Benchmark) and callable(obj):
        obj = obj()
    if not isinstance(obj, Benchmark):
        raise BenchmarkError(f"{path} is a {type(obj).__name__}, not a visplay.eval.benchmarks.Benchmark")
    return obj


# ---------------------------------------------------------------- parquet rows


def _read_rows(path: Path, limit: int | None) -> list[tuple[str | None, dict]]:
    """(id from the ``id`` column or None, row dict with ``__row``) for up to ``limit`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise BenchmarkError(f"{path} is empty (0 bytes)")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise BenchmarkError(f"{path} is not a readable parquet file: {e}") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if not any(c in names for c in IMAGE_COLUMNS):
        missing.append("images")
    if missing:
        raise BenchmarkError(
            f"{path} lacks column(s) {', '.join(missing)}; a benchmark file needs problem, answer and "
            f"images (found: {', '.join(names) or 'none'})"
        )
    columns = [c for c in (*REQUIRED_COLUMNS, *IMAGE_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
    rows: list[tuple[str | None, dict]] = []
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns):
            for row in batch.to_pylist():
                if limit is not None and len(rows) >= limit:
                    return rows
                row["__row"] = len(rows)
                rows.append((None if row.get("id") is None else str(row["id"]), row))
    except (pa.ArrowException, OSError) as e:
        raise BenchmarkError(f"{path} could not be read: {e}") from e
    return rows


def _check_unique(name: str, ids: list[str]) -> None:
    dupes = [i for i, c in Counter(ids).items() if c > 1]
    if dupes:
        raise BenchmarkError(f"benchmark {name}: duplicate ids {dupes[:5]}; ids must be unique to align results")


def _image_list(value: Any, folder: Path) -> tuple[Any, ...]:
    if value is None:
        return ()
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(_resolve_path(v, folder) for v in values)


def _resolve_path(value: Any, folder: Path) -> Any:
    """Relative image paths are relative to the parquet file's folder."""
    if isinstance(value, str) and not Path(value).is_absolute():
        return str(folder / value)
    if isinstance(value, dict) and value.get("bytes") is None and isinstance(value.get("path"), str):
        return {**value, "path": _resolve_path(value["path"], folder)}
    return value


def _options(value: Any) -> tuple[str, ...]:
    """Options as a tuple of strings: a list, or its string form (``"['a', 'b']"``); else ()."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if v is not None)
    return ()


def _answer_text(answer: Any) -> str:
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return answer if isinstance(answer, str) else str(answer)


def _digest(problem: str, answer: str, options: tuple[str, ...], images: tuple[Any, ...]) -> str:
    h = hashlib.sha256()
    for part in (problem, answer, *options):
        h.update(part.encode("utf-8", "replace") + b"\0")
    for img in images:
        h.update(_image_bytes(img) + b"\1")
    return h.hexdigest()[:16]


def _image_bytes(img: Any) -> bytes:
    if isinstance(img, (bytes, bytearray, memoryview)):
        return bytes(img)
    if isinstance(img, dict):
        return _image_bytes(img.get("bytes") if img.get("bytes") is not None else img.get("path") or "")
    if isinstance(img, str):  # a path: its name, size and modification time stand for its content
        try:
            st = Path(img).stat()
            return f"{img}:{st.st_size}:{st.st_mtime_ns}".encode()
        except OSError:
            return img.encode()
    tobytes = getattr(img, "tobytes", None)
    return tobytes() if callable(tobytes) else repr(img).encode()


def with_options(entry: Benchmark, **changes: Any) -> Benchmark:
    """A copy of ``entry`` with fields changed (e.g. the world's ``n`` and ``seed`` from the CLI)."""
    allowed = {f.name for f in dataclasses.fields(entry)}
    return dataclasses.replace(entry, **{k: v for k, v in changes.items() if k in allowed and v is not None})


__all__ = [
    "Benchmark", "BenchmarkError", "Item", "Loaded", "PAPER_BENCHMARKS", "SkippedItem", "WorldBenchmark",
    "load_benchmark", "registry", "resolve_benchmarks", "with_options",
]
