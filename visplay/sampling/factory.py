"""Open the sampler every stage uses (loop stages, `visplay eval` world and benchmarks) from `cfg.sampler`.

    with open_sampler(cfg.sampler, model_dir, dtype="bfloat16", log_path=run / "iter1/labels.server.log") as s:
        s.generate(prompts, params)

* ``backend: transformers``: load ``model_dir`` (to the GPU when there is one) into a `TransformersSampler`.
* ``backend: openai`` without ``launch``: use the server at ``url`` as is (checked with ``GET /models`` first).
* ``backend: openai`` with ``launch``, or ``backend: vllm`` (whose ``launch`` defaults to ``vllm serve``):
  start the command (``{model}``, ``{port}``, ``{host}``, ``{python}``,
  ``{local_rank}`` filled in, shell-quoted; `for_rank` gives each training process its own port) in its own process group, wait until it answers ``/models``, sample, then
  stop that process group (SIGTERM, then SIGKILL after 30 s). A server that dies or does not come up
  within ``startup_timeout`` is an error naming the command and quoting the end of its log.

Test: `pytest tests/test_serve.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from visplay.sampling.openai import OpenAISampler, SamplerError, display_url
from visplay.settings import ConfigError, base_url, require
from visplay.models import load_model


#: How stages outside GRPO sample: in-process transformers, an OpenAI-compatible server (used as is
#: or launched per stage with ``launch``), or a vLLM server launched per stage from its own env.
SAMPLER_BACKENDS = ("transformers", "openai", "vllm")
#: backend vllm, when ``launch``/``url`` are not given (`vllm` of requirements/serve-vllm.txt on PATH)
VLLM_LAUNCH = "vllm serve {model} --host {host} --port {port}"
VLLM_URL = "http://127.0.0.1:8000/v1"


@dataclass
class SamplerConfig:
    """How every stage samples outside GRPO (questions, silver labels, the questioner reward, world
    and benchmark eval); `visplay.sampling.factory.open_sampler` opens it.

    ``backend``: ``transformers`` loads the stage's model in process (`TransformersSampler`).
    ``openai``: any OpenAI-compatible chat-completions server at ``url`` (`vllm serve`, SGLang, TGI,
    `visplay serve`); the loop's models change every stage, so ``launch`` (a command template with
    ``{model}``, ``{port}``, ``{host}``, ``{python}``, ``{local_rank}``) starts one server per stage
    on that stage's model and stops it afterwards; without ``launch`` the server at ``url`` is used as
    is (it must serve the right model). ``vllm``: ``openai`` with ``launch`` defaulting to
    ``vllm serve {model} --host {host} --port {port}`` and ``url`` to ``http://127.0.0.1:8000/v1``
    (`vllm` from the ``[vllm]`` extra, or a separate env, requirements/serve-vllm.txt: docs/scaling.md §8).
    """

    backend: str = "transformers"  # transformers | openai | vllm
    url: str | None = None  # openai/vllm: the API base, e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # environment variable holding the server's bearer token (`visplay serve --api-key-env`)
    launch: str | None = None  # openai/vllm: command that starts a server for one stage's {model}
    concurrency: int = 8  # requests in flight (one prompt, n samples, per request)
    timeout: float = 600.0  # seconds per request
    retries: int = 3  # retries after the first attempt, on connection errors, 429 and 5xx
    backoff: float = 1.0  # first wait in seconds; doubles each retry
    startup_timeout: float = 900.0  # seconds a launched server may take to answer /v1/models
    batch_rows: int = 256  # transformers backend: B·n rows decoded at once

    def __post_init__(self) -> None:
        if self.backend not in SAMPLER_BACKENDS:
            raise ConfigError(f"sampler.backend must be one of {list(SAMPLER_BACKENDS)}, got {self.backend!r}")
        if self.backend == "transformers" and (self.url is not None or self.launch is not None):
            raise ConfigError("sampler.url and sampler.launch are for sampler.backend openai or vllm; "
                              "set sampler.backend=openai (or pass --sampler-url) to sample through a server")
        if self.backend == "vllm":
            self.url = self.url or VLLM_URL
            self.launch = self.launch or VLLM_LAUNCH
        if self.backend == "openai" and self.url is None:
            raise ConfigError("sampler.backend openai needs sampler.url (e.g. http://127.0.0.1:8000/v1)")
        if self.url is not None:
            parts = base_url("sampler.url", self.url)
            if self.launch is not None and parts.port is None:
                raise ConfigError(f"sampler.url {self.url!r} needs an explicit port when sampler.launch starts the server")
        if self.launch is not None and "{model}" not in self.launch:
            raise ConfigError("sampler.launch needs a {model} placeholder, e.g. 'vllm serve {model} --port {port}'")
        require("sampler.", ("concurrency", self.concurrency, self.concurrency >= 1, ">= 1"),
                ("timeout", self.timeout, self.timeout > 0, "> 0 seconds"),
                ("retries", self.retries, self.retries >= 0, ">= 0"),
                ("backoff", self.backoff, self.backoff >= 0, ">= 0 seconds"),
                ("startup_timeout", self.startup_timeout, self.startup_timeout > 0, "> 0 seconds"),
                ("batch_rows", self.batch_rows, self.batch_rows >= 1, ">= 1"))

    @property
    def in_process(self) -> bool:
        """True when stages load their model here (backend transformers), not behind a server."""
        return self.backend == "transformers"


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def launch_command(cfg: SamplerConfig, model_dir: str | Path, local_rank: int = 0) -> str:
    """``cfg.launch`` with its placeholders filled in (each value shell-quoted)."""
    parts = urllib.parse.urlsplit(cfg.url or "")
    values = {"model": str(model_dir), "port": str(parts.port or ""), "host": parts.hostname or "127.0.0.1",
              "python": sys.executable, "local_rank": str(local_rank)}
    try:
        return cfg.launch.format(**{k: shlex.quote(v) for k, v in values.items()})
    except (KeyError, IndexError) as e:
        raise SamplerError(f"sampler.launch {cfg.launch!r} uses an unknown placeholder {e}; "
                           "known: {model}, {port}, {host}, {python}, {local_rank}") from e


def for_rank(cfg: SamplerConfig, local_rank: int) -> SamplerConfig:
    """The sampler config of one training process: a launched server listens on port + local_rank."""
    if cfg.launch is None or local_rank == 0:
        return cfg
    parts = urllib.parse.urlsplit(cfg.url)
    netloc = f"{parts.hostname}:{parts.port + local_rank}"
    return dataclasses.replace(cfg, url=urllib.parse.urlunsplit(parts._replace(netloc=netloc)))


@contextlib.contextmanager
def launched_server(cfg: SamplerConfig, model_dir: str | Path, log_path: Path | None = None,
                    local_rank: int = 0) -> Iterator[OpenAISampler]:
    """Start ``cfg.launch`` for ``model_dir``, yield a ready `OpenAISampler`, stop the server on exit."""
    cmd = launch_command(cfg, model_dir, local_rank)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="visplay-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        probe = client(cfg, timeout=5.0, retries=0)
        deadline = time.monotonic() + cfg.startup_timeout
        while True:
            if proc.poll() is not None:
                raise SamplerError(f"sampling server exited with status {proc.returncode} before answering "
                                   f"(command: {cmd}); end of {log_path}:\n{_tail(log_path)}")
            try:
                served = probe.models()
                break
            except SamplerError:
                if time.monotonic() > deadline:
                    raise SamplerError(f"sampling server at {display_url(cfg.url)} did not answer within "
                                       f"{cfg.startup_timeout:.0f}s (command: {cmd}); end of {log_path}:\n"
                                       f"{_tail(log_path)}") from None
                time.sleep(0.5)
        yield client(cfg, model=served[0] if served else None)
    finally:
        _stop(proc)


def client(cfg, **overrides) -> OpenAISampler:
    """The OpenAI-compatible client of ``cfg`` (a `SamplerConfig`), with its bearer token read from
    the environment variable `sampler.api_key_env` names (keys stay out of configs and manifests)."""
    kw = dict(concurrency=cfg.concurrency, timeout=cfg.timeout, retries=cfg.retries, backoff=cfg.backoff)
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise SamplerError(f"sampler.api_key_env {cfg.api_key_env}: that environment variable is not set or empty")
        kw["api_key"] = key
    return OpenAISampler(cfg.url, **{**kw, **overrides})


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's own process group (it was started with start_new_session, so its pgid is its pid)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def open_sampler(cfg: SamplerConfig, model_dir: str | Path, dtype: str = "float32", log_path: Path | None = None,
                 progress: bool = False, device: str | None = None) -> Iterator:
    """The sampler for one stage over ``model_dir``; see the module docstring. ``device``: where an
    in-process model goes (default: the current GPU if there is one, else the CPU)."""
    if cfg.in_process:
        import torch

        from visplay.sampling.hf import TransformersSampler  # imports torch: only for the in-process backend

        model, processor = load_model(model_dir, dtype=getattr(torch, dtype))
        device = device or ("cuda" if torch.cuda.is_available() else None)
        if device is not None:
            model = model.to(device)
        try:
            yield TransformersSampler(model, processor, batch_rows=cfg.batch_rows, progress=progress)
        finally:  # give the GPU back before the next stage (a launched GRPO phase needs all of it)
            del model
            if torch.cuda.is_available():
                import gc

                gc.collect()
                torch.cuda.empty_cache()
    elif cfg.launch is not None:
        local_rank = int(device.split(":")[1]) if device and ":" in device else 0
        with launched_server(cfg, model_dir, log_path, local_rank) as sampler:
            sampler.progress = progress
            yield sampler
    else:
        sampler = client(cfg, progress=progress)
        sampler.preflight()
        yield sampler
