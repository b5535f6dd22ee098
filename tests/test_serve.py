"""The OpenAI-compatible path for real: `visplay serve` on 127.0.0.1 + `OpenAISampler`, no network, no vLLM.

The server runs the micro test model through `TransformersSampler`; the client's completions must
equal the in-process sampler's for the same seeds (images survive the base64 PNG round trip
exactly), n per prompt, in prompt order. Also: retries on 5xx, a clear error naming the URL when
nothing listens, request validation, and `sampler.launch` starting and stopping a real
`visplay serve` process, including the whole short loop sampling through it (slow).
Run: `pytest -q tests/test_serve.py` (`-m slow` for the loop).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from visplay.config import SamplerConfig
from visplay.roles.prompts import questioner_messages, reasoner_messages
from visplay.sampling.base import Prompt, SamplingParams
from visplay.sampling.factory import launch_command, open_sampler
from visplay.sampling.hf import TransformersSampler
from visplay.sampling.openai import OpenAISampler, SamplerError, openai_messages
from visplay.sampling.server import SamplerServer, parse_request
from visplay.worlds.scene import make_scene


def _prompts(n=3):
    qs = ["How many red objects are there?", "What fraction of the objects are blue?"]
    out = [Prompt(reasoner_messages(qs[i % 2]), (make_scene("train", i).render(),)) for i in range(n - 1)]
    return out + [Prompt(questioner_messages(), (make_scene("train", 9).render(),))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(micro):
    sampler = TransformersSampler(*micro)
    with SamplerServer(sampler, "micro") as server:
        yield server, sampler


def test_client_returns_n_completions_equal_to_in_process(served):
    server, local = served
    client = OpenAISampler(server.url, concurrency=3)
    params = SamplingParams(n=4, temperature=1.0, top_k=20, max_new_tokens=6, seed=11)
    prompts = _prompts()
    remote = client.generate(prompts, params)
    assert client.model == "micro"  # picked from /v1/models
    assert [len(r) for r in remote] == [4, 4, 4]
    # prompt i is sampled with seed + i, on the server exactly as in process
    assert remote == [local.generate([p], replace(params, seed=11 + i))[0] for i, p in enumerate(prompts)]
    greedy = client.generate(prompts[:1], SamplingParams(n=2, temperature=0, max_new_tokens=6))
    assert greedy[0][0] == greedy[0][1] == local.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=6))[0][0]
    assert client.generate([], params) == []


def test_messages_round_trip_through_the_request_parser():
    prompt = _prompts(1)[0]
    body = {"messages": openai_messages(prompt), "n": 3, "temperature": 0.5, "top_k": 7, "top_p": 0.9,
            "max_tokens": 12, "seed": 4}
    parsed, params = parse_request(json.loads(json.dumps(body)))
    assert parsed.messages == prompt.messages
    assert np.array_equal(np.asarray(parsed.images[0]), np.asarray(prompt.images[0]))
    assert params == SamplingParams(n=3, temperature=0.5, top_k=7, top_p=0.9, max_new_tokens=12, seed=4)
    with pytest.raises(ValueError, match="more image slots"):
        openai_messages(Prompt(prompt.messages, ()))


def _post(url, body) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_validates_requests(served):
    server, _ = served
    with urllib.request.urlopen(server.url + "/models", timeout=10) as r:
        assert [m["id"] for m in json.loads(r.read())["data"]] == ["micro"]
    remote_image = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}, {"type": "text", "text": "hi"}]}]}
    code, reply = _post(server.url, remote_image)
    assert code == 400 and "remote URLs are not fetched" in reply["error"]["message"]
    bad_png = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}
    code, reply = _post(server.url, bad_png)
    assert code == 400 and "unusable image" in reply["error"]["message"]
    code, reply = _post(server.url, {"model": "other", "messages": [{"role": "user", "content": "hi"}]})
    assert code == 404 and "'micro'" in reply["error"]["message"]
    code, reply = _post(server.url, {"messages": []})
    assert code == 400
    code, reply = _post(server.url, {"messages": [{"role": "user", "content": "hi"}], "n": 0})
    assert code == 400 and "n must be" in reply["error"]["message"]
    # a client given a wrong model name fails at once, naming both
    with pytest.raises(SamplerError, match="does not serve 'other'"):
        OpenAISampler(server.url, model="other").preflight()


class Flaky:
    """Fails the first ``fails`` calls (the server answers 500), then answers."""

    def __init__(self, fails: int):
        self.fails, self.calls = fails, 0

    def generate(self, prompts, params):
        self.calls += 1
        if self.calls <= self.fails:
            raise RuntimeError("CUDA out of memory (simulated)")
        return [[f"ok{i}" for i in range(params.n)] for _ in prompts]


def test_retries_transient_errors_then_gives_up():
    flaky = Flaky(fails=2)
    with SamplerServer(flaky, "flaky") as server:
        out = OpenAISampler(server.url, retries=2, backoff=0.01).generate(_prompts(1), SamplingParams(n=2))
        assert out == [["ok0", "ok1"]] and flaky.calls == 3
        flaky.calls, flaky.fails = 0, 10
        with pytest.raises(SamplerError, match="after 2 attempts.*HTTP 500.*out of memory"):
            OpenAISampler(server.url, retries=1, backoff=0.01).generate(_prompts(1), SamplingParams(n=2))


def test_unreachable_server_error_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SamplerError, match=f"sampling server {url} unreachable.*after 2 attempts"):
        OpenAISampler(url, retries=1, backoff=0.01, timeout=2).generate(_prompts(1), SamplingParams())


def test_eval_through_a_server_matches_in_process(served, micro_model_dir, tmp_path, monkeypatch):
    import pandas as pd

    from visplay.cli import main

    server, local_sampler = served
    requests = []
    monkeypatch.setattr(local_sampler, "generate", lambda prompts, params, _g=local_sampler.generate:
                        requests.append(len(prompts)) or _g(prompts, params))
    common = ["eval", "--model", str(micro_model_dir), "--n", "6", "--k", "2", "--set", "eval.max_new_tokens=6"]
    assert main(common + ["--out", str(tmp_path / "local")]) == 0
    assert main(common + ["--out", str(tmp_path / "remote"), "--sampler-url", server.url]) == 0
    local, remote = (pd.read_parquet(tmp_path / d / "items.parquet") for d in ("local", "remote"))
    assert list(remote.question) == list(local.question)
    assert list(remote.greedy_output) == list(local.greedy_output)  # greedy: the same text either way
    assert all(len(s) == 2 for s in remote.samples)
    assert len(requests) == 2 * 6  # one greedy and one sampled request per question went to the server


def test_launch_command_quotes_placeholders(tmp_path):
    cfg = SamplerConfig(backend="openai", url="http://127.0.0.1:8123/v1", launch="vllm serve {model} --port {port} --host {host}")
    assert launch_command(cfg, tmp_path / "my model") == f"vllm serve '{tmp_path}/my model' --port 8123 --host 127.0.0.1"
    with pytest.raises(SamplerError, match="unknown placeholder"):
        launch_command(replace(cfg, launch="x {model} {gpu}"), tmp_path)


def test_launched_server_serves_the_stage_model_and_is_stopped(micro_model_dir, tmp_path):
    port = free_port()
    cfg = SamplerConfig(backend="openai", url=f"http://127.0.0.1:{port}/v1", launch="{python} -m visplay.cli serve --model {model} --port {port}",
                        startup_timeout=300, retries=1, backoff=0.01)
    log = tmp_path / "server.log"
    with open_sampler(cfg, micro_model_dir, log_path=log) as sampler:
        assert sampler.model == str(micro_model_dir)
        out = sampler.generate(_prompts(2), SamplingParams(n=3, max_new_tokens=4))
        assert [len(o) for o in out] == [3, 3]
    assert "serving" in log.read_text()
    with pytest.raises(SamplerError, match="unreachable"):  # stopped with the stage
        OpenAISampler(cfg.url, retries=0, timeout=2).models()


def test_launched_server_that_dies_is_a_clear_error(micro_model_dir, tmp_path):
    cfg = SamplerConfig(backend="openai", url=f"http://127.0.0.1:{free_port()}/v1",
                        launch="{python} -c 'import sys; print(\"no GPU here\"); sys.exit(3)' {model}")
    with pytest.raises(SamplerError, match=r"exited with status 3.*no GPU here"):
        with open_sampler(cfg, micro_model_dir, log_path=tmp_path / "s.log"):
            pass


def test_vllm_backend_launches_vllm_serve_for_benchmark_eval(micro_model_dir, tmp_path, monkeypatch, capsys):
    """backend vllm = `vllm serve {model} --host {host} --port {port}` per stage (here a stand-in
    `vllm` on PATH that starts `visplay serve` with the same arguments), and `visplay eval
    --benchmarks` samples through it: the benchmark path opens its sampler through the factory."""
    import os
    import stat
    import sys

    from visplay.cli import main

    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n[ "$1" = serve ] || exit 9\nshift\nmodel="$1"; shift\n'
                    f'echo "vllm stand-in: $model $*"\nexec {sys.executable} -m visplay.cli serve --model "$model" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    out = tmp_path / "bench"
    argv = ["eval", "--model", str(micro_model_dir), "--benchmarks", "world", "--n", "3", "--out", str(out),
            "--max-new-tokens", "4", "--set", "sampler.backend=vllm", "--set", f"sampler.url=http://127.0.0.1:{port}/v1",
            "--set", "sampler.startup_timeout=300"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["world"]["n_scored"] == 3
    log = (out / "sampler.server.log").read_text()
    assert f"vllm stand-in: {micro_model_dir} --host 127.0.0.1 --port {port}" in log and "serving" in log
    with pytest.raises(SamplerError, match="unreachable"):  # the launched server stopped with the evaluation
        OpenAISampler(f"http://127.0.0.1:{port}/v1", retries=0, timeout=2).models()


@pytest.mark.slow
def test_short_loop_samples_through_launched_servers(micro_model_dir, tmp_path):
    from test_evolve import SHORT, STAGES

    from visplay.config import load_config
    from visplay.evolve.loop import run_evolve

    port = free_port()
    cfg = load_config("tiny", SHORT + [f"model={micro_model_dir}", "evolve.max_new_tokens=8",
                                       "evolve.questioner.max_completion_length=8", "eval.max_new_tokens=8",
                                       "sampler.backend=openai", f"sampler.url=http://127.0.0.1:{port}/v1", "sampler.startup_timeout=300",
                                       "sampler.launch='{python} -m visplay.cli serve --model {model} --port {port}'"])
    run = tmp_path / "run"
    run_evolve(cfg, run, say=print)
    m = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(m[s]["state"] == "done" for s in STAGES)
    # every sampling stage went through its own server, on that stage's model
    for stage, model in (("iter0/eval", micro_model_dir), ("iter1/questioner", micro_model_dir),
                         ("iter1/questions", run / "iter1/questioner"), ("iter1/labels", micro_model_dir)):
        assert f"serving {model} " in (run / f"{stage}.server.log").read_text()
