"""Write the checked-in fuzz corpus of model outputs, deterministically from a seed.

    python scripts/make_fuzz_corpus.py             # rewrites tests/corpus/{questioner,reasoner}.jsonl.gz
    python scripts/make_fuzz_corpus.py --check     # exit 1 if the files differ from what the seed gives

Each line is ``{"id", "kind", "text"}``; reasoner lines also carry ``group`` (the question the
sample answers: groups of `GROUP` consecutive lines are voted on together) and ``label`` (the
silver label the reward compares against). What is in it, and why:

* valid outputs written by the world's question grammar (the happy path must stay happy);
* broken tags: missing, misspelt, upper-case, reordered, doubled, nested, unclosed, with
  attributes, text or code fences around them, cut off mid-way (what ``max_new_tokens`` does);
* braces: nested thousands deep, unbalanced either way, thousands of unclosed ``\\boxed{``,
  boxes with spaces or empty, ``\\fbox``, boxes only inside ``<think>``;
* huge outputs (up to 1 MB; repetitive, so the gzip stays small), runs of whitespace that made the
  old questioner regex backtrack for hours;
* unicode: emoji, right-to-left and zero-width characters, combining marks, look-alike letters,
  NUL and other control characters, lone surrogates (JSON from a server can carry them);
* answers that make sympy hang or explode: power towers, factorial towers, huge exponents,
  deeply nested fractions, ``1/0``. They come in a few distinct shapes, each in a group whose
  other answers agree (on "2x"), so voting the whole corpus costs one timed-out comparison per shape.

The generator only uses the standard library and the world grammar, so the corpus is the same on
every machine; gzip is written with mtime 0, so the bytes are too. Used by tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "corpus"
GROUP = 8  # reasoner samples per voted question
MAX_LEN = 1_000_000  # characters per output at most (a 1 MB sample is already far past any max_new_tokens)
N_QUESTIONER = 6000
N_REASONER_GROUPS = 760  # x GROUP = 6080 reasoner outputs

# Answers sympy cannot finish with (through mathruler, against a symbolic partner such as "2x"):
# Python-syntax power and factorial towers. mathruler refuses LaTeX towers itself, quickly; those
# are in too, to show the fast refusals stay fast. Each shape is voted against "2x" (an integer
# partner short-circuits in mathruler and would hide the hang).
HANGERS = ["9**9**9", "9**9**9**9", "10**10**10", "(9**9)**(9**9)", "99999999**99999999", "((10!)!)!", "100000000!",
           "(x+1)**100000"]
LATEX_TOWERS = [
    "9^{9^{9^{9}}}", "10^{10^{10^{10}}}", "(10^{100})!", "x^{10^{9}}-1", "e^{e^{e^{e^{e^{e}}}}}",
    "\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{"
    "\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{\\frac{1}{2}}}}}}}}}}}}}}}}}}}}",
]
HANG_PARTNER = "2x"
# Sizes for nesting and repetition. Few distinct values on purpose: what costs the grader is each
# *distinct* long answer (it reaches sympy once, then the cache answers), so a handful of sizes
# keeps the whole-corpus test fast while the largest still reach the limits.
DEPTHS = [1, 2, 50, 2000, 25000]
ODD_NUMBERS = ["1/0", "0/0", "\\frac{1}{0}", "-0", "1e308", "1e-400", "inf", "nan", "-inf", "1" * 5000,
               "0." + "3" * 3000, "9" * 400 + "/" + "7" * 400, "1,000,000", "1 000", "٣", "½", "²", "0x1F"]
PLAIN = ["1", "2", "3", "4", "7", "0", "12", "0.5", "1/2", "\\frac{1}{2}", "0.25", "A", "B", "C", "(D)", "E.",
         "red", "Blue", "circle", "square", "yes", "no", "\\text{red}", "$3$", "3.0", "three"]
UNICODE = ["🙂", "\u202e", "\u200b", "\u200d", "e\u0301" * 3, "\ufeff", "ＡＢＣ", "мultiple", "\x00", "\x07", "\x1b[31m",
           "\x7f", "\u2028", "\ud800", "\udfff", "𝟙𝟚", "ß", "İ", "\x85", "\u3000"]
TAG_WORDS = ["type", "question", "answer", "think"]


def world_triples(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(qtype, question, answer) written by the world grammar for random scenes."""
    from visplay.worlds.questions import FAMILIES, make_question
    from visplay.worlds.scene import make_scene

    out = []
    for i in range(n):
        q = make_question(make_scene("train", 10_000 + i), random.Random(rng.random()), tuple(FAMILIES))
        out.append((q.qtype, q.text, q.answer))
    return out


def questioner_text(t: str, q: str, a: str) -> str:
    return f"<type>{t}</type>\n<question>{q}</question>\n<answer>{a}</answer>"


def junk(rng: random.Random, n: int) -> str:
    alphabet = "{}\\<>/ \n\t$^_()[]0123456789abcxyzABC" + "".join(UNICODE)
    return "".join(rng.choice(alphabet) for _ in range(n))


def questioner_outputs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    triples = world_triples(rng, 400)
    def pick():
        return rng.choice(triples)

    makers = {
        "valid": lambda: questioner_text(*pick()),
        "valid_spacing": lambda: "  \n" + questioner_text(*pick()).replace("\n", rng.choice(["", " ", "\n\n", "\t"])) + " \n",
        "truncated": lambda: (lambda s: s[: rng.randrange(len(s))])(questioner_text(*pick())),
        "missing_tag": lambda: questioner_text(*pick()).replace(f"<{rng.choice(TAG_WORDS[:3])}>", "", 1),
        "missing_close": lambda: questioner_text(*pick()).replace(f"</{rng.choice(TAG_WORDS[:3])}>", "", 1),
        "misspelt": lambda: questioner_text(*pick()).replace("question", rng.choice(["questoin", "Question", "QUESTION", "q"]), 1),
        "reordered": lambda: (lambda t, q, a: f"<question>{q}</question><type>{t}</type><answer>{a}</answer>")(*pick()),
        "doubled": lambda: questioner_text(*pick()) + questioner_text(*pick()),
        "nested": lambda: (lambda t, q, a: questioner_text(t, f"{q} <answer>{a}</answer>", a))(*pick()),
        "attributes": lambda: questioner_text(*pick()).replace("<type>", '<type kind="x">'),
        "text_around": lambda: rng.choice(["Sure! ", "```xml\n", "<think>hmm</think>"]) + questioner_text(*pick())
                               + rng.choice(["", " Hope that helps.", "\n```"]),
        "unknown_type": lambda: (lambda t, q, a: questioner_text(rng.choice(["essay", "", "multiple chоice", "NUMERICAL ",
                                                                            "regression\x00", "🙂", "x" * 500]), q, a))(*pick()),
        "empty_parts": lambda: questioner_text(pick()[0], rng.choice(["", "   ", "\n"]), rng.choice(["", " ", "1"])),
        "unicode": lambda: (lambda t, q, a: questioner_text(t, rng.choice(UNICODE).join(q.split(" ")), a + rng.choice(UNICODE)))(*pick()),
        "control_chars": lambda: questioner_text(*pick()).replace(" ", rng.choice(["\x00", "\x0b", "\x1f", "\x08"])),
        "braces": lambda: (lambda t, q, a: questioner_text(t, q, "{" * rng.randint(1, 3000) + a + "}" * rng.randint(0, 3000)))(*pick()),
        "boxed_answer": lambda: (lambda t, q, a: questioner_text(t, q, f"\\boxed{{{a}}}"))(*pick()),
        "hang_answer": lambda: (lambda t, q, a: questioner_text("numerical", q, rng.choice(HANGERS + LATEX_TOWERS)))(*pick()),
        "whitespace_run": lambda: "<type>numerical</type><question>" + rng.choice([" ", "\t", "\n", " \t"]) * rng.randint(1000, 30000)
                                  + rng.choice(["x", "</question><answer>1</answer>x", ""]),
        "tag_storm": lambda: "<type>numerical</type><question>" + rng.choice(["</question><answer>", "a</question>",
                                                                              "</answer>", "<question>"]) * rng.randint(100, 3000) + "z",
        "huge": lambda: questioner_text("numerical", "How many " + "red " * rng.randint(5000, 250000) + "objects?", "1"),
        "huge_answer": lambda: questioner_text("numerical", "How many?", "9" * rng.randint(1000, 100000)),
        "junk": lambda: junk(rng, rng.randint(0, 400)),
        "empty": lambda: rng.choice(["", " ", "\n", "<", "<type>", "</answer>"]),
    }
    weights = {"valid": 12, "valid_spacing": 4, "truncated": 8}
    kinds = list(makers)
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, [weights.get(k, 3) for k in kinds])[0]
        out.append((kind, makers[kind]()[:MAX_LEN]))
    return out


def reasoner_text(think: str, answer: str) -> str:
    return f"<think>{think}</think>\nThe answer is \\boxed{{{answer}}}."


DECORATED = [u + p for u, p in zip(UNICODE[::2], PLAIN)]  # answers with unicode/control characters glued on


def answer_pool(rng: random.Random) -> str:
    """An answer: mostly plain, some odd numbers, some decorated. A fixed pool on purpose: the grader
    pays for each distinct pair once, so the whole corpus votes in a minute, not an hour."""
    return rng.choice(PLAIN * 3 + ODD_NUMBERS + DECORATED)


def reasoner_outputs(rng: random.Random, groups: int) -> list[dict]:
    thinks = ["a1 b2 c3", "row 2 has a red circle", "", "{", "}}}", "\\boxed{7}", "<think>", "x" * 50]
    makers = {
        "valid": lambda a: reasoner_text(rng.choice(thinks), a),
        "no_think": lambda a: f"\\boxed{{{a}}}",
        "think_after": lambda a: f"\\boxed{{{a}}}<think>late</think>",
        "unclosed_think": lambda a: f"<think>thinking \\boxed{{{a}}}",
        "nested_think": lambda a: f"<think><think>x</think></think>\\boxed{{{a}}}",
        "box_in_think_only": lambda a: f"<think>maybe \\boxed{{{a}}}</think> so that is it",
        "several_boxes": lambda a: reasoner_text("x", "1") + " or " + "".join(f"\\boxed{{{answer_pool(rng)}}}" for _ in range(rng.randint(2, 50))) + f"\\boxed{{{a}}}",
        "space_box": lambda a: f"<think>x</think>\\boxed {{{a}}}",
        "fbox": lambda a: f"<think>x</think>\\fbox{{{a}}}",
        "empty_box": lambda a: "<think>x</think>\\boxed{}" + rng.choice(["", " ", "\\boxed{ }"]),
        "bare_box": lambda a: f"<think>x</think>\\boxed {a}",
        "unclosed_box": lambda a: f"<think>x</think>\\boxed{{{a}",
        "deep_braces": lambda a: "<think>x</think>\\boxed{" + "{" * rng.choice(DEPTHS) + rng.choice(PLAIN[:2]) + "}" * rng.choice(DEPTHS),
        "unbalanced_close": lambda a: "<think>x</think>" + "}" * rng.randint(1, 5000) + f"\\boxed{{{a}}}" + "}" * rng.randint(0, 50),
        "box_storm": lambda a: "\\boxed{" * rng.randint(500, 20000) + a,
        "truncated": lambda a: (lambda s: s[: rng.randrange(len(s))])(reasoner_text(rng.choice(thinks), a)),
        "huge": lambda a: "<think>" + rng.choice(["a1 ", "🙂", " ", "\n", "{}"]) * rng.randint(10_000, 300_000) + f"</think>\\boxed{{{a}}}",
        "huge_box": lambda a: "<think>x</think>\\boxed{" + (rng.choice(PLAIN[:3]) + " ") * rng.choice(DEPTHS) + "}",
        "unicode": lambda a: reasoner_text(rng.choice(UNICODE) * rng.randint(1, 50), rng.choice(DECORATED)),
        "control_chars": lambda a: reasoner_text("\x00\x01\x02", a).replace(" ", rng.choice(["\x00", "\x1b", "\r"])),
        "junk": lambda a: junk(rng, rng.randint(0, 400)),
        "latex_text": lambda a: reasoner_text("x", "\\text{" * rng.choice(DEPTHS[:4]) + rng.choice(PLAIN[:2]) + "}" * rng.choice(DEPTHS[:4])),
        "dollars": lambda a: reasoner_text("x", "$" * rng.choice(DEPTHS) + rng.choice(PLAIN[:2]) + "$" * rng.choice(DEPTHS)),
    }
    kinds = list(makers)
    records: list[dict] = []
    shapes = HANGERS + LATEX_TOWERS
    hang_groups = set(rng.sample(range(groups), len(shapes) * 2))
    hang_cycle = iter(shapes * 2)
    for g in range(groups):
        if g in hang_groups:  # one hanging answer, voted after GROUP-1 agreeing ones
            label = HANG_PARTNER
            texts = [("valid", reasoner_text("x", HANG_PARTNER)) for _ in range(GROUP - 1)]
            texts.append(("hang", reasoner_text("big", next(hang_cycle))))
        else:
            label = answer_pool(rng)
            texts = []
            for _ in range(GROUP):
                kind = rng.choices(kinds, [12 if k == "valid" else 2 for k in kinds])[0]
                a = label if rng.random() < 0.4 else answer_pool(rng)
                texts.append((kind, makers[kind](a)))
        records += [{"group": g, "label": label, "kind": k, "text": t[:MAX_LEN]} for k, t in texts]
    return records


def build(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    questioner = [{"id": f"q{i:05d}", "kind": k, "text": t} for i, (k, t) in enumerate(questioner_outputs(rng, N_QUESTIONER))]
    reasoner = [{"id": f"r{i:05d}", **r} for i, r in enumerate(reasoner_outputs(rng, N_REASONER_GROUPS))]
    files = {}
    for name, records in (("questioner", questioner), ("reasoner", reasoner)):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
            for r in records:  # ensure_ascii keeps lone surrogates and control characters as \\u escapes
                f.write((json.dumps(r, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii"))
        files[f"{name}.jsonl.gz"] = buf.getvalue()
    return files


def load(name: str, root: Path = OUT) -> list[dict]:
    """The records of ``questioner`` or ``reasoner`` from the checked-in corpus."""
    with gzip.open(root / f"{name}.jsonl.gz", "rt", encoding="ascii") as f:
        return [json.loads(line) for line in f]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    files = build(args.seed)
    if args.check:
        stale = [n for n, data in files.items() if not (out / n).is_file() or (out / n).read_bytes() != data]
        print("corpus up to date" if not stale else f"corpus differs from seed {args.seed}: {stale}")
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
        print(f"{out / name}: {len(data) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
