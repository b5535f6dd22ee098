"""Nothing a user's files, config or requests contain can hang, crash or trap a run (issue 19).

Each test is one case that used to break: a FIFO or a /dev/zero link among the images, path strings
in a parquet escaping its folder, a struct whose `bytes` is a str, a source whose every row is bad,
a deleted stage output that made `--resume` fail forever, a run directory that could not be moved,
config values accepted at load time and failing later, `visplay serve` on hostile requests, write
errors as tracebacks, and a judge key cut before it was masked. Offline, micro model, about a
minute on 2 cores: `OMP_NUM_THREADS=1 pytest -q tests/test_untrusted_inputs.py`.
"""

from __future__ import annotations

import errno
import http.client
import io
import json
import logging
import os
import shutil
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import re

import pytest
from test_reliability import MICRO_RUN, _sets

from visplay.cli import main
from visplay.config import ConfigError, config_from_manifest, load_config
from visplay.data import sources
from visplay.data.images import image_id
from visplay.data.sources import FolderSource, ParquetSource
from visplay.config import JudgeConfig
from visplay.eval.judge import JudgeClient, JudgeError
from visplay.evolve.loop import run_evolve
from visplay.evolve.preflight import preflight
from visplay.run.rundir import RunDir
from visplay.sampling.hf import TransformersSampler
from visplay.sampling.server import BACKLOG, Limits, SamplerServer
from visplay.status import status_text
from visplay.worlds.scene import make_scene


def png(i: int) -> bytes:
    buf = io.BytesIO()
    make_scene("unlabeled", 1000 + i).render().save(buf, format="PNG")
    return buf.getvalue()


def hostile_folder(root: Path, good: int) -> Path:
    """`good` scene PNGs plus a FIFO, a /dev/zero link, a 0-byte file and a text file, all named as images."""
    root.mkdir()
    for i in range(good):
        (root / f"good{i}.png").write_bytes(png(i))
    os.mkfifo(root / "a-fifo.png")  # sorts first: an open() for reading would block forever
    (root / "zero.jpg").symlink_to("/dev/zero")  # a read() would fill memory
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image at all\n")
    return root


# ---------------------------------------------------------------- image files


@pytest.mark.timeout(60)
def test_fifo_and_device_are_skipped_unopened(tmp_path):
    src = FolderSource(hostile_folder(tmp_path / "imgs", good=2))
    items = list(src)
    assert [Path(i.origin).name for i in items] == ["good0.png", "good1.png"]
    assert dict(src.skipped) == {"not_a_file": 2, "empty_file": 1, "not_an_image": 1}
    assert any("a FIFO" in s for s in src.skipped.first) and any("character device" in s for s in src.skipped.first)


def test_read_is_bounded_whatever_stat_says(tmp_path, monkeypatch):
    """/proc files are regular, report size 0 and hold more: only MAX_FILE_BYTES + 1 bytes are read."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "maps.png").symlink_to("/proc/self/maps")
    (tmp_path / "imgs" / "ok.png").write_bytes(png(0))
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", len(png(0)) + 10)
    src = FolderSource(tmp_path / "imgs")
    assert [Path(i.origin).name for i in src] == ["ok.png"]
    assert dict(src.skipped) == {"file_too_large": 1}


def test_memory_error_skips_the_item_not_the_run(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png(i))
    real = sources.decode_image

    def decode(raw, **kw):
        if raw == png(1):
            raise MemoryError
        return real(raw, **kw)

    monkeypatch.setattr(sources, "decode_image", decode)
    src = FolderSource(tmp_path / "imgs")
    assert [i.id for i in src] == [image_id(png(0)), image_id(png(2))]
    assert dict(src.skipped) == {"out_of_memory": 1}


# ---------------------------------------------------------------- parquet rows


def test_parquet_paths_are_confined_to_the_source_root_unless_allowed(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "secret.png").write_bytes(png(7))  # outside the data folder
    (data / "inside.png").write_bytes(png(1))
    table = pa.table({"images": [["inside.png"], ["../secret.png"], [str(tmp_path / "secret.png")]]})
    pq.write_table(table, data / "train.parquet")
    src = ParquetSource(data / "train.parquet")
    assert [i.id for i in src] == [image_id(png(1))]
    assert dict(src.skipped) == {"outside_source_root": 2}
    assert "outside" in src.skipped.first[0] and "row=1" in src.skipped.first[0]
    opened = ParquetSource(data / "train.parquet", allow_outside_root=True)
    assert [i.id for i in opened] == [image_id(png(1)), image_id(png(7)), image_id(png(7))]
    # the loop's source opts in through the config, never by default
    from visplay.evolve.context import open_images

    spec = [f"evolve.source=parquet:{data / 'train.parquet'}", "evolve.agreement=answer"]  # trace: world images only
    assert len(list(open_images(load_config("tiny", spec)))) == 1
    assert len(list(open_images(load_config("tiny", [*spec, "evolve.allow_outside_source=true"])))) == 3


def test_struct_whose_bytes_is_a_string_is_a_row_skip(tmp_path):
    struct = pa.struct([("bytes", pa.string()), ("path", pa.string())])
    cells = pa.array([{"bytes": "iVBORw0KGgo=", "path": None}, {"bytes": "/etc/hostname", "path": None}], struct)
    pq.write_table(pa.table({"images": cells}), tmp_path / "a.parquet")
    good = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"images": pa.array([{"bytes": png(3), "path": None}], good)}), tmp_path / "b.parquet")
    src = ParquetSource(tmp_path)
    assert [i.id for i in src] == [image_id(png(3))]
    assert dict(src.skipped) == {"bad_cell": 2}
    assert "bytes field holds a str" in src.skipped.first[0]


def test_preflight_fails_fast_when_no_row_is_usable(micro_model_dir, tmp_path):
    pq.write_table(pa.table({"images": [b"junk", b"", None, b"more junk"]}), tmp_path / "bad.parquet")
    cfg = load_config("tiny", [f"model={micro_model_dir}", f"evolve.source=parquet:{tmp_path / 'bad.parquet'}",
                               "evolve.agreement=answer"])
    with pytest.raises(ValueError, match=r"no usable image: all 4 skipped \(.*not_an_image 2.*\); first: .*row=0"):
        preflight(cfg)
    run = tmp_path / "run"
    assert main(["evolve", "--run", str(run), "--set", f"model={micro_model_dir}", "--set", "evolve.agreement=answer",
                 "--set", f"evolve.source=parquet:{tmp_path / 'bad.parquet'}"]) == 2
    assert not run.exists()


# ---------------------------------------------------------------- resume and moved runs


@pytest.fixture(scope="module")
def finished_run(micro_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished") / "run"
    assert main(["evolve", "--run", str(root), "--set", f"model={micro_model_dir}", *_sets(MICRO_RUN)]) == 0
    return root


def test_deleted_or_damaged_output_is_rerun_on_resume(finished_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(finished_run, root)
    rows = pq.read_table(root / "iter1/questions.parquet").to_pylist()
    (root / "iter1/questions.parquet").unlink()
    labels = (root / "iter1/labels.parquet").read_bytes()
    (root / "iter1/labels.parquet").write_bytes(labels[: len(labels) // 2])  # torn
    text = status_text(root)
    assert "iter1/questions must run again: iter1/questions.parquet is missing" in text
    assert "redo     iter1/labels" in text and "--resume runs it again" in text
    said: list[str] = []
    cfg = config_from_manifest(RunDir(root).manifest()["config"])
    run_evolve(cfg, root, resume=True, say=said.append)
    assert "iter1/questions: marked done but iter1/questions.parquet is missing; running it again" in said
    assert any(s.startswith("iter1/labels: marked done but iter1/labels.parquet has") for s in said)
    assert "iter1/questioner: done (resumed)" in said and "iter1/reasoner: done (resumed)" in said
    assert pq.read_table(root / "iter1/questions.parquet").to_pylist() == rows  # seeded: the same rows
    assert pq.read_table(root / "iter1/labels.parquet").num_rows == len(rows)
    assert "finished: all 6 stages done" in status_text(root)


def test_a_moved_run_resumes_with_its_own_models(finished_run, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(finished_run, original)
    stages = json.loads((original / "manifest.json").read_text())["stages"]
    assert stages["iter1/questioner"]["model"] == "iter1/questioner"  # stored relative to the run
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(original, moved)  # the original location is gone
    assert RunDir(moved).stage_info("iter1/questioner")["model"] == str(moved / "iter1/questioner")
    (moved / "iter1/questions.parquet").unlink()  # forces a stage that samples the questioner
    assert main(["evolve", "--run", str(moved), "--resume"]) == 0
    assert pq.read_table(moved / "iter1/questions.parquet").num_rows == stages["iter1/questions"]["rows"]


# ---------------------------------------------------------------- config values


BAD_VALUES = ["evolve.chunk_size=0", "evolve.chunk_size=-1", "evolve.grader_timeout=-1", "evolve.max_new_tokens=-1",
              "evolve.temperature=-1", "evolve.top_k=-5", "eval.max_new_tokens=-1", "eval.temperature=-1",
              "bench.temperature=-1", "bench.top_p=0", "bench.seed=-1", "evolve.reasoner.lr=-1",
              "sampler.startup_timeout=0", "evolve.grader_timeout=.nan"]


@pytest.mark.parametrize("override", BAD_VALUES)
def test_bad_config_values_are_refused_at_load_naming_the_key(override):
    section, key = override.split("=")[0].rsplit(".", 1)  # named as evolve.top_k or evolve.reasoner: lr
    with pytest.raises(ConfigError, match=rf"{re.escape(section)}(\.|: ){key} must be"):
        load_config("tiny", [override])


def test_bad_values_fail_dry_run_and_write_no_run_directory(micro_model_dir, tmp_path, capsys):
    assert main(["evolve", "--dry-run", "--set", "evolve.top_k=-5"]) == 2
    assert "evolve.top_k must be >= 0" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["evolve", "--run", str(run), "--set", f"model={micro_model_dir}",
                 "--set", "evolve.grader_timeout=-1"]) == 2
    err = capsys.readouterr().err
    assert "evolve.grader_timeout must be > 0" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


# ---------------------------------------------------------------- visplay serve


@pytest.fixture
def micro_server(micro):
    with SamplerServer(TransformersSampler(*micro), "micro", limits=Limits(max_n=8, max_tokens=16,
                                                                           max_body_bytes=4096)) as server:
        yield server


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


TEXT = {"messages": [{"role": "user", "content": "How many red objects are there?"}], "max_tokens": 4}


def test_serve_text_only_request_with_several_samples(micro_server):
    code, reply = _post(micro_server.url, {**TEXT, "n": 3, "seed": 5})
    assert code == 200 and len(reply["choices"]) == 3


@pytest.mark.parametrize("extra, message", [
    ({"n": 10000}, "n must be in [1, 8]"), ({"max_tokens": 10**6}, "max_tokens must be in [1, 16]"),
    ({"top_p": 7}, "top_p must be in"), ({"top_p": 0}, "top_p must be in (0, 1]"),
    ({"seed": 2**70}, "seed must be in"), ({"seed": -1}, "seed must be in"), ({"n": "3"}, "n must be an integer"),
    ({"temperature": float("inf")}, "temperature must be"), ({"n": 2.5}, "n must be an integer"),
])
def test_serve_refuses_out_of_range_sampling_parameters(micro_server, extra, message):
    code, reply = _post(micro_server.url, {**TEXT, **extra})
    assert code == 400 and message in reply["error"]["message"]


@pytest.mark.parametrize("length, status, message", [
    ("abc", 400, "Content-Length must be a number"), (None, 400, "Content-Length must be a number"),
    ("-5", 400, "Content-Length must be a number"), ("5000", 413, "over this server's limit of 4,096"),
])
def test_serve_malformed_framing_is_a_4xx(micro_server, length, status, message):
    host, port = micro_server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    if length is not None:
        conn.putheader("Content-Length", length)
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == status and message in json.loads(reply.read())["error"]["message"]
    conn.close()


def test_serve_bearer_token_backlog_and_non_loopback_warning(micro, caplog):
    with SamplerServer(TransformersSampler(*micro), "micro", api_key="s3cret") as server:
        assert _post(server.url, TEXT)[0] == 401
        assert _post(server.url, TEXT, {"Authorization": "Bearer wrong"})[0] == 401
        assert _post(server.url, TEXT, {"Authorization": "Bearer s3cret"})[0] == 200
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(server.url + "/models", timeout=10)
        # the loop's client sends the token named by sampler.api_key_env
        from visplay.config import SamplerConfig
        from visplay.sampling.factory import client
        from visplay.sampling.openai import SamplerError

        os.environ["VISPLAY_TEST_SERVE_KEY"] = "s3cret"
        try:
            assert client(SamplerConfig(backend="openai", url=server.url, api_key_env="VISPLAY_TEST_SERVE_KEY")).models() == ["micro"]
            with pytest.raises(SamplerError, match="401"):
                client(SamplerConfig(backend="openai", url=server.url, retries=0)).models()
        finally:
            del os.environ["VISPLAY_TEST_SERVE_KEY"]
        with pytest.raises(SamplerError, match="VISPLAY_TEST_SERVE_KEY: that environment variable is not set"):
            client(SamplerConfig(backend="openai", url=server.url, api_key_env="VISPLAY_TEST_SERVE_KEY"))
    caplog.set_level(logging.WARNING)
    server = SamplerServer(TransformersSampler(*micro), "micro", host="0.0.0.0")
    try:
        assert server.httpd.request_queue_size == BACKLOG >= 64
        assert "reachable from other machines" in caplog.text and "no authentication" in caplog.text
    finally:
        server.httpd.server_close()


class Instant:
    def generate(self, prompts, params):
        return [["ok"] * params.n for _ in prompts]


def test_serve_takes_a_burst_of_concurrent_clients():
    with SamplerServer(Instant(), "instant") as server:
        codes: list = []

        def client():
            try:
                codes.append(_post(server.url, TEXT)[0])
            except OSError as e:  # ConnectionResetError with Python's default backlog of 5
                codes.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert codes == [200] * 40


# ---------------------------------------------------------------- write errors are one line


def test_report_and_eval_out_write_errors_are_one_line(finished_run, micro_model_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["report", str(finished_run), "--out", str(blocker / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visplay report: error: cannot write {blocker}") and len(err.strip().splitlines()) == 1
    import visplay.eval.world as world

    monkeypatch.setattr(world, "evaluate_world", lambda *a, **k: pytest.fail("sampled before checking --out"))
    assert main(["eval", "--model", str(micro_model_dir), "--n", "2", "--k", "1", "--out", str(blocker / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visplay eval: error: cannot write {blocker}") and len(err.strip().splitlines()) == 1


def test_full_disk_at_the_lock_is_one_line(micro_model_dir, tmp_path, capsys, monkeypatch):
    def full(fd, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    root = tmp_path / "run"
    assert main(["evolve", "--run", str(root), "--set", f"model={micro_model_dir}", *_sets(MICRO_RUN)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {root / 'lock'}: No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not (root / "manifest.json").exists()


# ---------------------------------------------------------------- the judge key


def test_judge_key_is_masked_before_the_error_body_is_cut(tmp_path, monkeypatch):
    key = "sk-" + "k" * 40
    monkeypatch.setenv("VISPLAY_JUDGE_API_KEY", key)

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _echo(self):
            body = ("x" * 280 + " auth=" + self.headers.get("Authorization", "")).encode()  # the key crosses 300
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _echo

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = JudgeClient(JudgeConfig(url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", model="m",
                                         max_retries=0, timeout=5), tmp_path / "cache.jsonl")
        with pytest.raises(JudgeError) as e:
            client.judge_many([("id", "q", "a")])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "HTTP 400" in str(e.value) and "sk-kkk" not in str(e.value)


# ---------------------------------------------------------------- the whole loop on a hostile folder


def test_one_iteration_on_a_hostile_folder_runs_to_completion(micro_model_dir, tmp_path):
    folder = hostile_folder(tmp_path / "imgs", good=6)
    root = tmp_path / "run"
    assert main(["evolve", "--run", str(root), "--set", f"model={micro_model_dir}",
                 "--set", f"evolve.source=folder:{folder}", *_sets(MICRO_RUN),
                 "--set", "evolve.images_per_iteration=8"]) == 0  # more than there are: every file is visited
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    assert all(s["state"] == "done" for s in stages.values()) and len(stages) == 6
    expected = {"not_a_file": 2, "empty_file": 1, "not_an_image": 1}
    assert stages["iter1/questions"]["skipped_images"] == expected
    rows = pq.read_table(root / "iter1/questions.parquet").to_pylist()
    assert sorted({r["image_id"] for r in rows}) == sorted(image_id(png(i)) for i in range(6))
