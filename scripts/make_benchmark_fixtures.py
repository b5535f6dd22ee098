"""Write small stand-ins for the paper's seven benchmark files, with questions about world scenes.

What for: ``visplay eval --benchmarks ...`` reads the real benchmarks from files that visplay never
downloads (docs/evaluation.md). These fixtures have the same layout (``images`` as a list of
``{"bytes", "path"}`` PNG structs, ``problem``, ``answer``, plus ``options``/``category``/``id`` where
the real benchmark has them) and each benchmark's answer type, but their pictures are rendered
held-out world scenes and their questions come from the world's grammar, so the tiny model, which
only knows the world, can answer them. That gives a fresh clone the whole paper-style table on
the CPU, without downloading anything, with one command (repository root, venv active):

    python scripts/make_benchmark_fixtures.py runs/bench-fixtures && visplay eval --model tiny --benchmarks mmmu,mm-vet,realworldqa,visnumbench,mathverse,mathvision,hallusionbench,world --data-dir runs/bench-fixtures --out runs/bench-fixtures/eval --min-pixels 19600 --max-pixels 19600

(``--min-pixels/--max-pixels 19600`` keeps the 140x140 px world images at their native size, one
vision token per grid cell, as the world benchmark always does; with the paper's defaults they
would be upscaled to 512x512 px, which the tiny model has never seen. A rerun of the eval reuses
its cached generations; a rerun of this script needs ``--force``.)

Per benchmark (answer type as in ``visplay.eval.benchmarks``):

* ``mmmu``: option letter; ``id``, ``<image 1>`` in the problem, options in an ``options`` column in
  MMMU's string form; multiple-choice world questions (attribute, compare, left-most).
* ``mm-vet``: free text (``3<OR>three``), ``category`` = question family; the same questions
  without options, plus counting ones.
* ``realworldqa``: option letter, options written in the problem (as RealWorldQA does), worded
  exactly as the world's questions.
* ``visnumbench``: option letter over four numbers; counting, sums and columns.
* ``mathverse``, ``mathvision``: a number; counting, sums and columns.
* ``hallusionbench``: yes/no; "Is there a red circle?" from the scene's objects (balanced) and
  "Are there more red objects than blue objects?".

Scenes are drawn from the held-out split at indices from 10^9 up, so they never coincide with the
world benchmark's (``seed·10^6 + i``, world seeds < 1000) nor with each other. Output depends only on ``--n`` and
``--seed``: the same arguments give byte-identical files. Files are written atomically; existing
ones are refused (naming the file) unless ``--force``. Test: ``pytest -q tests/test_benchmark_fixtures.py``.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from visplay.eval.benchmarks import PAPER_BENCHMARKS
from visplay.io import atomic_write_parquet
from visplay.worlds.questions import Question, make_question
from visplay.worlds.scene import COLOURS, SHAPES, Scene, WorldConfig, make_scene

SPLIT = "heldout"
INDEX_BASE = 10**9  # the world benchmark uses seed·10^6 + i; stay clear of it
PER_SEED = 10**6  # scene indices per seed: 7 benchmarks × at most 10^5 rows
PER_BENCHMARK = 10**5
MAX_N = PER_BENCHMARK
LETTERS = "ABCDE"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
CHOICE_FAMILIES = ("attribute", "compare", "leftmost")
NUMBER_FAMILIES = ("count", "sum", "column")
_INLINE_OPTIONS = re.compile(r"^(?P<stem>.*?\?)(?P<opts>(?: [A-E]\. [a-z]+)+)$")

ONE_LINER = (
    "python scripts/make_benchmark_fixtures.py runs/bench-fixtures && visplay eval --model tiny --benchmarks "
    + ",".join((*PAPER_BENCHMARKS, "world"))
    + " --data-dir runs/bench-fixtures --out runs/bench-fixtures/eval --min-pixels 19600 --max-pixels 19600"
)


# ---------------------------------------------------------------- questions per answer type


def _split_options(q: Question) -> tuple[str, list[str], str]:
    """(stem, options, the correct option's text) of a multiple-choice world question."""
    m = _INLINE_OPTIONS.match(q.text)
    if m is None:
        raise ValueError(f"not a multiple-choice question: {q.text!r}")
    options = re.findall(r"[A-E]\. ([a-z]+)", m.group("opts"))
    return m.group("stem"), options, options[LETTERS.index(q.answer)]


def _number_options(answer: int, lo: int, hi: int, rng: random.Random) -> tuple[list[str], str]:
    """Four distinct numbers in [lo, hi] (fewer if the range is smaller), ascending, one of them ``answer``."""
    pool = [x for x in range(max(lo, answer - 4), min(hi, answer + 4) + 1) if x != answer]
    opts = sorted(rng.sample(pool, min(3, len(pool))) + [answer])
    return [str(x) for x in opts], LETTERS[opts.index(answer)]


def _mmmu(scene: Scene, rng: random.Random, i: int) -> dict:
    q = make_question(scene, rng, CHOICE_FAMILIES)
    stem, options, _ = _split_options(q)
    return {"id": f"fixture_mmmu_{i}", "problem": f"<image 1> {stem}", "answer": q.answer,
            "options": repr(options), "category": q.family}


def _mm_vet(scene: Scene, rng: random.Random, i: int) -> dict:
    q = make_question(scene, rng, CHOICE_FAMILIES + NUMBER_FAMILIES)
    if q.qtype == "multiple choice":
        stem, _, answer = _split_options(q)
    else:
        n = int(q.answer)
        stem, answer = q.text, f"{n}<OR>{NUMBER_WORDS[n]}" if n < len(NUMBER_WORDS) else str(n)
    return {"problem": stem, "answer": answer, "category": q.family}


def _realworldqa(scene: Scene, rng: random.Random, i: int) -> dict:
    q = make_question(scene, rng, CHOICE_FAMILIES)  # options stay in the text, in the world's own grammar
    return {"problem": q.text, "answer": q.answer}


def _visnumbench(scene: Scene, rng: random.Random, i: int) -> dict:
    q = make_question(scene, rng, NUMBER_FAMILIES)
    lo, hi = (1, scene.grid) if q.family == "column" else (0, len(scene.objects) + 4)
    options, letter = _number_options(int(q.answer), lo, hi, rng)
    listed = " ".join(f"{LETTERS[k]}. {opt}" for k, opt in enumerate(options))
    return {"problem": f"{q.text} {listed}", "answer": letter, "category": q.family}


def _number(scene: Scene, rng: random.Random, i: int) -> dict:
    q = make_question(scene, rng, NUMBER_FAMILIES)
    return {"problem": q.text, "answer": q.answer, "category": q.family}


def _hallusionbench(scene: Scene, rng: random.Random, i: int) -> dict:
    if i % 2 == 1:  # a comparison from the grammar, its yes/no option as the answer
        stem, _, answer = _split_options(make_question(scene, rng, ("compare",)))
        return {"problem": stem, "answer": answer, "category": "compare"}
    present = sorted({(o.colour, o.shape) for o in scene.objects})
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    answer = "yes" if present and (not absent or rng.random() < 0.5) else "no"
    colour, shape = rng.choice(present if answer == "yes" else absent)
    article = "an" if shape[0] in "aeiou" else "a"
    return {"problem": f"Is there {article} {colour} {shape}?", "answer": answer, "category": "existence"}


MAKERS: dict[str, Callable[[Scene, random.Random, int], dict]] = {
    "mmmu": _mmmu,
    "mm-vet": _mm_vet,
    "realworldqa": _realworldqa,
    "visnumbench": _visnumbench,
    "mathverse": _number,
    "mathvision": _number,
    "hallusionbench": _hallusionbench,
}
assert tuple(MAKERS) == PAPER_BENCHMARKS


# ---------------------------------------------------------------- files


def _png(scene: Scene) -> bytes:
    buf = io.BytesIO()
    scene.render().save(buf, format="PNG")
    return buf.getvalue()


def fixture_rows(name: str, n: int, seed: int, world: WorldConfig = WorldConfig()) -> list[dict]:
    """The ``n`` rows of benchmark ``name`` for ``seed`` (pure: same arguments, same rows)."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"--n must be in [1, {MAX_N}], got {n}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    b = PAPER_BENCHMARKS.index(name)
    rows = []
    for i in range(n):
        scene = make_scene(SPLIT, INDEX_BASE + seed * PER_SEED + b * PER_BENCHMARK + i, world)
        row = MAKERS[name](scene, random.Random(f"bench-fixtures:{seed}:{name}:{i}"), i)
        image = {"bytes": _png(scene), "path": f"{name}-{seed}-{i}.png"}
        rows.append({**({"id": row.pop("id")} if "id" in row else {}), "images": [image], **row})
    return rows


def write_fixtures(out_dir: str | Path, n: int = 8, seed: int = 0, force: bool = False,
                   names: Sequence[str] = PAPER_BENCHMARKS) -> list[Path]:
    """Write ``OUT_DIR/<name>.parquet`` for each benchmark; refuses existing files unless ``force``."""
    out = Path(out_dir)
    paths = [out / f"{name}.parquet" for name in names]
    folders = [out / name for name in names if (out / name).exists()]
    if folders:  # the loader would find both the folder and the file
        raise FileExistsError(f"{folders[0]} already exists and would shadow {folders[0]}.parquet; remove it")
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} already exists; pass --force to overwrite")
    rows = {name: fixture_rows(name, n, seed) for name in names}  # everything built before anything is written
    for name, path in zip(names, paths):
        atomic_write_parquet(path, rows[name])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make_benchmark_fixtures.py",
        description="Write world-scene stand-ins for the seven paper benchmarks as OUT_DIR/<name>.parquet.",
        epilog=f"The whole table in one command: {ONE_LINER}",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the parquet files (created if missing)")
    parser.add_argument("--n", type=int, default=8, help="questions per benchmark (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="picks scenes and questions (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        paths = write_fixtures(args.out_dir, args.n, args.seed, args.force)
    except (FileExistsError, ValueError) as e:
        print(f"make_benchmark_fixtures.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} benchmarks × {args.n} questions to {args.out_dir}/ "
          f"({', '.join(p.name for p in paths)})")
    print(f"next: visplay eval --model tiny --benchmarks {','.join((*PAPER_BENCHMARKS, 'world'))} "
          f"--data-dir {args.out_dir} --out {Path(args.out_dir) / 'eval'} --min-pixels 19600 --max-pixels 19600")
    return 0


if __name__ == "__main__":
    sys.exit(main())
