"""LLM judge client against a real HTTP server on 127.0.0.1 speaking OpenAI chat completions.

The server (stdlib `http.server`, started by each test, no network) counts every request, can fail
with HTTP 500 a given number of times, can require an API key, and judges by a fixed rule. Checks:
retries with backoff, errors before any generation, the on-disk cache (a resumed run sends zero
requests), and that the API key never reaches a file, a log line or the terminal.
Run: `pytest -q tests/test_judge.py`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visplay.eval.benchmarks import resolve_benchmarks
from visplay.config import ConfigError, JudgeConfig
from visplay.eval.judge import JudgeClient, JudgeError, fill_prompt, load_prompt, parse_verdict
from visplay.config import BenchConfig
from visplay.eval.run import evaluate_benchmarks
from visplay.eval.store import AppendLog
from visplay.worlds.scene import make_scene

MODEL = "judge-test"
SECRET = "sk-test-DO-NOT-LEAK-5f3a9c"
FAST = BenchConfig(max_new_tokens=8, batch_size=8, min_pixels=None, max_pixels=None, grader_workers=0)
MAX_REQUESTS = 40  # every test stays far below this; the server refuses beyond it


class JudgeServer:
    """A chat-completions endpoint: CORRECT iff every <AND> part of some <OR> alternative is in the candidate."""

    def __init__(self, fail_first: int = 0, require_key: str | None = None, models=(MODEL,)):
        self.fail_first, self.require_key, self.models = fail_first, require_key, list(models)
        self.requests: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict | str):
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _admit(self, body: dict) -> bool:
                with server.lock:
                    server.requests.append((self.command, self.path, body))
                    n = len(server.requests)
                    failing = server.fail_first > 0 and self.command == "POST"
                    if failing:
                        server.fail_first -= 1
                if n > MAX_REQUESTS:
                    self._send(503, "too many requests for one test")
                    return False
                auth = self.headers.get("Authorization", "")
                if server.require_key and auth != f"Bearer {server.require_key}":
                    self._send(401, {"error": {"message": "invalid api key"}})
                    return False
                if failing:  # a careless server that echoes the credentials in its error page
                    self._send(500, f"internal error; request had Authorization: {auth}")
                    return False
                return True

            def do_GET(self):
                if self._admit({}) and self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                elif self.path != "/v1/models":
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._admit(body):
                    return
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                prompt = body["messages"][-1]["content"]
                ref = re.search(r"Reference answer:\n(.*?)\n\nCandidate answer:", prompt, re.S).group(1)
                cand = re.search(r"Candidate answer:\n(.*?)\n\nReply", prompt, re.S).group(1).lower()
                ok = any(all(p.strip().lower() in cand for p in alt.split("<AND>")) for alt in ref.split("<OR>"))
                ok = ok or (ref == "dog" and "puppy" in cand)  # the judge knows what rules do not
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "CORRECT" if ok else "INCORRECT"}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def chats(self) -> list[dict]:
        return [b for m, p, b in self.requests if m == "POST"]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(**kw):
        servers.append(JudgeServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _client(url, cache, sleeps=None, **kw):
    config = JudgeConfig(url=url, model=kw.pop("model", MODEL), backoff=0.01, max_backoff=0.05, timeout=5, **kw)
    return JudgeClient(config, cache, sleep=(sleeps.append if sleeps is not None else (lambda s: None)))


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    make_scene("heldout", i).render().save(buf, format="PNG")
    return buf.getvalue()


# problem -> (answer, completion); mm-vet is judged, hallusionbench is not
MMVET = {"What animal is shown?": ("dog", "a puppy"), "Describe the object.": ("red<AND>circle", "a red circle"),
         "How many squares?": ("4<OR>four", "five"), "What is written?": ("stop", "no box here")}
HALLU = {"Is there a red object?": ("yes", "yes")}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge") / "data"
    root.mkdir()
    for name, rows in (("mm-vet", MMVET), ("hallusionbench", HALLU)):
        pq.write_table(pa.table({"problem": list(rows), "answer": [a for a, _ in rows.values()],
                                 "images": [[{"bytes": _png(i), "path": None}] for i in range(len(rows))]}),
                       root / f"{name}.parquet")
    return root


class Fake:
    def __init__(self):
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        out = []
        for p in prompts:
            problem = p.messages[0]["content"][0]["text"].split(" Reason in")[0]
            _, completion = {**MMVET, **HALLU}[problem]
            out.append([completion if completion == "no box here" else f"<think>x</think>\\boxed{{{completion}}}"])
        return out


# ---------------------------------------------------------------- the client


def test_prompt_fill_and_verdict_parsing():
    template = load_prompt(JudgeConfig(url="http://x/v1", model="m").prompt_path)
    filled = fill_prompt(template, "Q {reference}?", "\\frac{1}{2}", "{candidate}")
    assert "Q {reference}?" in filled and "\\frac{1}{2}" in filled and filled.count("{candidate}") == 1
    assert parse_verdict("The answers differ. INCORRECT") is False and parse_verdict("correct") is True
    assert parse_verdict("") is None and parse_verdict(None) is None
    with pytest.raises(ConfigError, match="credentials"):
        JudgeConfig(url="http://user:pw@host/v1", model="m")
    with pytest.raises(ConfigError, match="go together"):
        JudgeConfig(url="http://host/v1", model="")
    with pytest.raises(ConfigError, match="go together"):
        JudgeConfig(model="m")
    with pytest.raises(JudgeError, match="the judge is off"):
        JudgeClient(JudgeConfig(), "unused.jsonl")


def test_asks_once_per_distinct_triple_at_temperature_zero_and_caches(server_factory, tmp_path):
    server = server_factory()
    cache = tmp_path / "cache.jsonl"
    client = _client(server.url + "/chat/completions/", cache)  # a pasted full path is accepted
    triples = [("Q1", "dog", "a puppy"), ("Q2", "red", "blue"), ("Q1", "dog", "a puppy")]
    verdicts = client.judge_many(triples)
    assert [v.correct for v in verdicts] == [True, False, True] and not any(v.cached for v in verdicts)
    chats = server.chats()
    assert len(chats) == 2 and all(b["temperature"] == 0 and b["model"] == MODEL for b in chats)
    assert "Q2" in chats[0]["messages"][0]["content"] + chats[1]["messages"][0]["content"]

    again = _client(server.url, cache).judge_many(triples)
    assert [v.correct for v in again] == [True, False, True] and all(v.cached for v in again)
    assert len(server.requests) == 2  # nothing new: the cache answered
    other_model = _client(server.url, cache, model="judge-other")
    assert not other_model.is_cached(*triples[0])  # the judge model is part of the key


def test_500_twice_then_recovers_with_exponential_backoff(server_factory, tmp_path):
    server = server_factory(fail_first=2)
    sleeps: list[float] = []
    (verdict,) = _client(server.url, tmp_path / "c.jsonl", sleeps).judge_many([("Q", "4", "4")])
    assert verdict.correct and len(server.chats()) == 3 and sleeps == [0.01, 0.02]


def test_retries_run_out_with_a_clear_error(server_factory, tmp_path):
    server = server_factory(fail_first=99)
    with pytest.raises(JudgeError, match=r"failed 3 time\(s\).*rerun the same command"):
        _client(server.url, tmp_path / "c.jsonl", max_retries=2).judge_many([("Q", "4", "4")])
    assert len(server.chats()) == 3


def test_torn_cache_line_is_ignored_and_not_glued_onto(tmp_path):
    log = AppendLog(tmp_path / "c.jsonl")
    log.append([{"key": "a", "correct": True, "reason": "judge_correct"}])
    with open(log.path, "ab") as f:
        f.write(b'{"key": "b", "corr')  # a crash mid-write
    log.append([{"key": "c", "correct": False, "reason": "judge_incorrect"}])
    assert [r["key"] for r in log.read()] == ["a", "c"]


# ---------------------------------------------------------------- errors before any generation


class NoSampler:
    def generate(self, prompts, params):  # pragma: no cover - must never run
        raise AssertionError("generation started before the judge was checked")


def test_unreachable_judge_fails_before_generation(data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = _client(f"http://127.0.0.1:{port}/v1", tmp_path / "c.jsonl")
    with pytest.raises(JudgeError, match="unreachable.*nothing was generated"):
        evaluate_benchmarks(resolve_benchmarks("mm-vet"), data_dir, tmp_path / "out", NoSampler(), FAST, client)
    assert not (tmp_path / "out").exists()


def test_rejected_key_and_unserved_model_fail_before_generation(server_factory, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VISPLAY_JUDGE_API_KEY", "wrong-key-123")
    server = server_factory(require_key=SECRET)
    with pytest.raises(JudgeError, match=r"HTTP 401.*\$VISPLAY_JUDGE_API_KEY") as e:
        evaluate_benchmarks(resolve_benchmarks("mm-vet"), data_dir, tmp_path / "o", NoSampler(), FAST,
                            _client(server.url, tmp_path / "c.jsonl"))
    assert "wrong-key-123" not in str(e.value)
    monkeypatch.setenv("VISPLAY_JUDGE_API_KEY", SECRET)
    with pytest.raises(JudgeError, match="does not serve --judge-model 'gpt-x'; it serves: judge-test"):
        evaluate_benchmarks(resolve_benchmarks("mm-vet"), data_dir, tmp_path / "o", NoSampler(), FAST,
                            _client(server.url, tmp_path / "c.jsonl", model="gpt-x"))
    assert not any(b for m, p, b in server.requests if m == "POST")


# ---------------------------------------------------------------- evaluation with the judge


def test_judged_evaluation_and_a_resume_that_costs_nothing(server_factory, data_dir, tmp_path):
    server = server_factory()
    out, cache = tmp_path / "run", tmp_path / "run" / "judge_cache.jsonl"
    benches = resolve_benchmarks("mm-vet,hallusionbench")
    result = evaluate_benchmarks(benches, data_dir, out, Fake(), FAST, _client(server.url, cache), model_id="m")
    rows = {r["question"]: r for r in result.rows}
    assert rows["What animal is shown?"]["rule_correct"] is False and rows["What animal is shown?"]["correct"] is True
    assert rows["What is written?"]["judge_reason"] == "no_boxed_answer"  # no box: nothing to ask
    assert rows["Is there a red object?"]["graded_by"] == "rule" and rows["Is there a red object?"]["judge_correct"] is None
    s = result.summary
    assert s["benchmarks"]["mm-vet"]["graded_by"] == "judge"
    assert (s["benchmarks"]["mm-vet"]["rule_accuracy"], s["benchmarks"]["mm-vet"]["accuracy"]) == (0.25, 0.5)
    assert s["judge"]["model"] == MODEL and s["judge"]["url"] == server.url
    assert len(server.chats()) == 3 and len(server.requests) == 4  # + one GET /models preflight
    first_md = (out / "summary.md").read_text()
    assert f"| judge ({MODEL}) | 50.0 | 100.0 | 75.0 |" in first_md and "| rule-based | 25.0 | 100.0 | 62.5 |" in first_md

    # resume in the same run directory: completions and verdicts are cached, the server hears nothing
    fake = Fake()
    evaluate_benchmarks(benches, data_dir, out, fake, FAST, _client(server.url, cache), model_id="m")
    assert len(server.requests) == 4 and fake.calls == 0 and (out / "summary.md").read_text() == first_md

    # a new run directory sharing the cache regenerates, but asks the judge nothing new
    evaluate_benchmarks(benches, data_dir, tmp_path / "run2", Fake(), FAST, _client(server.url, cache), model_id="m")
    assert len(server.chats()) == 3


def test_api_key_never_written_or_logged(server_factory, data_dir, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("VISPLAY_JUDGE_API_KEY", SECRET)
    server = server_factory(fail_first=2, require_key=SECRET)  # its 500 pages echo the Authorization header
    caplog.set_level(logging.DEBUG)
    client = _client(server.url, tmp_path / "run" / "judge_cache.jsonl")
    assert SECRET not in repr(client) and SECRET not in json.dumps(client.describe())
    evaluate_benchmarks(resolve_benchmarks("mm-vet"), data_dir, tmp_path / "run", Fake(), FAST, client,
                        model_id="m", progress=print)
    assert len(server.chats()) == 5  # 2 failures + 3 verdicts: the key was sent and accepted
    assert "HTTP 500" in caplog.text and "***" in caplog.text  # the echoed key was redacted
    server.fail_first = 99
    with pytest.raises(JudgeError) as e:
        _client(server.url, tmp_path / "other.jsonl", max_retries=1).judge_many([("new", "q", "a")])
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err, str(e.value)):
        assert SECRET not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 5
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------- the same through the CLI, as a user runs it


def _visplay(argv: list[str], key: str | None, timeout: float = 300):
    """``python -m visplay.cli ARGV`` in a fresh process; the key only in its environment."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "VISPLAY_JUDGE_API_KEY"}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if key is not None:
        env["VISPLAY_JUDGE_API_KEY"] = key
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "visplay.cli", *argv], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_judged_eval_keeps_the_key_out_of_every_output(server_factory, data_dir, tmp_path):
    server = server_factory(fail_first=1, require_key=SECRET)  # its first 500 page echoes the Authorization header
    out = tmp_path / "eval"
    proc = _visplay(["eval", "--model", "tiny", "--benchmarks", "mm-vet", "--data-dir", str(data_dir), "--out", str(out),
                     "--judge-url", server.url, "--judge-model", MODEL, "--max-new-tokens", "32", "--min-pixels", "19600",
                     "--max-pixels", "19600", "--grader-workers", "0"], key=SECRET)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(server.chats()) >= 2, "the judge was never asked: the check below would prove nothing"
    assert "HTTP 500" in proc.stderr and "***" in proc.stderr  # the echoed key was logged, redacted
    assert SECRET not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"items.jsonl", "summary.json", "summary.md", "judge_cache.jsonl"}
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


def test_cli_unreachable_judge_is_one_clear_error_before_anything_is_generated(data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = tmp_path / "eval"
    proc = _visplay(["eval", "--model", "tiny", "--benchmarks", "mm-vet", "--data-dir", str(data_dir), "--out", str(out),
                     "--judge-url", f"http://127.0.0.1:{port}/v1", "--judge-model", MODEL], key=SECRET, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"visplay eval: error: judge at http://127.0.0.1:{port}/v1/models failed"), last
    assert "unreachable" in last and "nothing was generated" in last
    assert "Traceback" not in proc.stderr and SECRET not in proc.stdout + proc.stderr
    assert not out.exists()
