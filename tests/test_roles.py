"""Role prompts and parsers: nested braces, several boxes, tag variants, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from visplay.roles.parsing import last_boxed, parse_questioner, parse_reasoner
from visplay.roles.prompts import questioner_messages, questioner_target, reasoner_messages


def test_last_boxed():
    assert last_boxed(r"\boxed{3}") == "3"
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{{a}{b}}") == "{a}{b}"
    assert last_boxed(r"\boxed {7}") == "7"
    assert last_boxed(r"\fbox{B}") == "B"
    assert last_boxed(r"\boxed{1} \boxed{unclosed") == "1"
    assert last_boxed("no box") is None
    assert last_boxed(None) is None


def test_parse_reasoner():
    ok = parse_reasoner(r"<think>b2 a1</think>\boxed{2}")
    assert ok.format_ok and ok.answer == "2" and ok.reason == "ok"
    assert parse_reasoner(r" <think>x</think> so \boxed{B} ").format_ok
    nothink = parse_reasoner(r"\boxed{2}")
    assert nothink.answer == "2" and not nothink.format_ok
    assert parse_reasoner("<think>x</think>").reason == "no boxed answer"
    assert parse_reasoner(r"<think>x</think>\boxed{}").answer is None
    assert not parse_reasoner(r"\boxed{1}<think>x</think>").format_ok


def test_parse_questioner():
    text = questioner_target("numerical", "How many red objects are there?", "3")
    q = parse_questioner(text)
    assert q.valid and q.qtype == "numerical" and q.question == "How many red objects are there?" and q.answer == "3"
    assert parse_questioner(" <type> Multiple Choice </type>\n<question>Q? A. x B. y</question> <answer>A</answer>").valid
    for bad, reason in [
        ("<type>numerical</type><question>Q</question>", "tags missing"),
        ("<type>essay</type><question>Q</question><answer>A</answer>", "unknown type"),
        ("<type>numerical</type><question></question><answer>1</answer>", "empty question"),
        ("<type>numerical</type><question>Q</question><answer></answer>", "empty answer"),
        ("junk <type>numerical</type><question>Q</question><answer>1</answer>", "tags missing"),
    ]:
        r = parse_questioner(bad)
        assert not r.valid and reason in r.reason, (bad, r)


def test_prompts_put_question_before_image():
    content = reasoner_messages("How many?")[0]["content"]
    assert content[0]["type"] == "text" and content[0]["text"].startswith("How many?") and content[1] == {"type": "image"}
    assert questioner_messages()[0]["content"][-1] == {"type": "image"}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}\\boxedthink<>/ aq1")) | st.characters(), max_size=200))
def test_parsers_are_total(text):
    r = parse_reasoner(text)
    assert r.format_ok == (r.reason == "ok")
    q = parse_questioner(text)
    assert q.valid == (q.reason == "ok")
    b = last_boxed(text)
    assert b is None or b.count("{") == b.count("}")


# The questioner regex the linear parser replaced: exact on short input, minutes on a run of spaces.
_OLD_QUESTIONER_RE = __import__("re").compile(
    r"\s*<type>\s*(?P<type>[^<]*?)\s*</type>\s*<question>\s*(?P<q>.*?)\s*</question>\s*"
    r"<answer>\s*(?P<a>.*?)\s*</answer>\s*", __import__("re").DOTALL)
_PIECES = ["<type>", "</type>", "<question>", "</question>", "<answer>", "</answer>", "numerical", "Q?", "1", "<",
           "</", " ", "\n", "\x1c", "\u3000", "\x85", "a", "multiple choice"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14))
def test_questioner_parser_agrees_with_the_old_regex(pieces):
    from visplay.roles.parsing import _questioner_parts

    text = "".join(pieces)
    m = _OLD_QUESTIONER_RE.fullmatch(text)
    got = _questioner_parts(text)
    if m is None:
        assert isinstance(got, str) and got
    else:
        assert got == (m.group("type"), m.group("q"), m.group("a"))


def test_parsers_take_linear_time_on_degenerate_samples():
    """Each of these took the old parsers from 20 s to hours (regex backtracking, one scan per box)."""
    import time

    n = 20_000
    cases = [
        "<type>numerical</type><question>" + " " * n + "x",
        "<type>numerical</type><question>q</question><answer>" + " " * n + "x</answer>y",
        "<type>" + " \t" * (n // 2),
        "<type>numerical</type><question>" + "</question><answer>" * (n // 19) + "z",
        "\\boxed{" * (n // 7),
        "<think>" + "{" * n + "\\boxed{",
    ]
    for text in cases:
        start = time.process_time()  # CPU time: a loaded machine does not make this flaky
        parse_questioner(text), parse_reasoner(text), last_boxed(text)
        assert time.process_time() - start < 1.0, text[:60]
