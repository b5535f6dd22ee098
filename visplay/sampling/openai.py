"""`Sampler` over any OpenAI-compatible chat-completions server: `vllm serve`, SGLang, TGI, `visplay serve`.

One request per prompt asks for all ``n`` samples (``"n": n``), so the server shares the prefill;
images travel inline as base64 PNG data URLs, in the order of the prompt's ``{"type": "image"}``
slots. Requests run on a thread pool (``concurrency`` in flight). Each prompt gets its own seed
(``params.seed + index``), so results do not depend on scheduling. ``top_k`` is sent only when
set (it is a vLLM/SGLang extension to the OpenAI schema).

Transient failures (connection refused or reset, timeouts, HTTP 429 and 5xx, malformed replies)
are retried with exponential backoff (``backoff * 2**attempt``); other HTTP errors fail at once.
When retries run out the `SamplerError` names the URL and the last error. Only the standard
library is used.

    sampler = OpenAISampler("http://127.0.0.1:8000/v1")     # model: the first one /v1/models lists
    sampler.generate([Prompt(messages, (image,))], SamplingParams(n=8, temperature=1.0))

Test: `pytest tests/test_serve.py` (a real `visplay serve` on 127.0.0.1, no network).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from visplay.sampling.base import Prompt, SamplingParams
from visplay.console import bar_disable

log = logging.getLogger(__name__)


class SamplerError(RuntimeError):
    """The sampling server cannot be used (unreachable after retries, a rejected request, a bad reply)."""


class _Transient(Exception):
    pass


def display_url(url: str | None) -> str:
    """``url`` without credentials, query or fragment: safe to print and store."""
    try:
        p = urllib.parse.urlsplit(url or "")
        netloc = f"{p.hostname or ''}:{p.port}" if p.port else (p.hostname or "")
        return urllib.parse.urlunsplit((p.scheme, netloc, p.path, "", ""))
    except ValueError:  # e.g. a port that is not a number
        return "<unparseable url>"


def data_url(image: Image.Image) -> str:
    """A PNG data URL (lossless, so the server sees exactly the pixels the source produced)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(prompt: Prompt) -> list[dict]:
    """HF-style chat messages with ``{"type": "image"}`` slots -> OpenAI messages with inline images."""
    images = iter(prompt.images)
    out = []
    for m in prompt.messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for c in content:
                if c.get("type") == "image":
                    try:
                        parts.append({"type": "image_url", "image_url": {"url": data_url(next(images))}})
                    except StopIteration:
                        raise ValueError("prompt has more image slots than images") from None
                else:
                    parts.append({"type": "text", "text": c.get("text", "")})
            content = parts
        out.append({"role": m["role"], "content": content})
    if next(images, None) is not None:
        raise ValueError("prompt has more images than image slots")
    return out


class OpenAISampler:
    """Sampler over ``url`` (the API base, e.g. ``http://127.0.0.1:8000/v1``)."""

    def __init__(self, url: str, model: str | None = None, concurrency: int = 8, timeout: float = 600.0,
                 retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0, progress: bool = False,
                 api_key: str | None = None):
        base = url.rstrip("/")
        self.api_key = api_key or None  # sent as `Authorization: Bearer`, never logged
        self.base = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
        self.model = model
        self.concurrency, self.timeout = concurrency, timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.progress = progress

    # -- HTTP -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code == 429 or e.code >= 500:
                raise _Transient(f"HTTP {e.code}: {detail}") from e
            raise SamplerError(f"sampling server {display_url(self.base + path)} rejected the request: "
                               f"HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            raise _Transient(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from e
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise _Transient(f"reply is not JSON: {raw[:100]!r}") from e

    def _with_retries(self, method: str, path: str, body: dict | None = None, check=None) -> dict:
        last = ""
        for attempt in range(self.retries + 1):
            try:
                reply = self._request(method, path, body)
                return check(reply) if check else reply
            except _Transient as e:
                last = str(e)
                if attempt < self.retries:
                    wait = min(self.max_backoff, self.backoff * 2 ** attempt)
                    log.warning("sampling server %s: %s; retry %d/%d in %.1fs", display_url(self.base), last,
                                attempt + 1, self.retries, wait)
                    time.sleep(wait)
        raise SamplerError(f"sampling server {display_url(self.base)} unreachable or failing after "
                           f"{self.retries + 1} attempts: {last}. Is it running (e.g. `vllm serve MODEL` or "
                           f"`visplay serve --model MODEL`) and is sampler.url right?")

    # -- API --------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The model ids the server serves (``GET /models``), with retries."""

        def check(reply: dict) -> list[str]:
            try:
                return [m["id"] for m in reply["data"]]
            except (KeyError, TypeError) as e:
                raise _Transient(f"malformed /models reply: {str(reply)[:100]}") from e

        return self._with_retries("GET", "/models", check=check)

    def preflight(self) -> str:
        """Check the server answers and serves ``model`` (pick the first one when unset); return it."""
        served = self.models()
        if not served:
            raise SamplerError(f"sampling server {display_url(self.base)} serves no model")
        if self.model is None:
            self.model = served[0]
        elif self.model not in served:
            raise SamplerError(f"sampling server {display_url(self.base)} does not serve {self.model!r}; it serves "
                               f"{served}")
        return self.model

    def _one(self, prompt: Prompt, params: SamplingParams, seed: int) -> list[str]:
        body = {"model": self.model, "messages": openai_messages(prompt), "n": params.n,
                "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
                "seed": seed}
        if params.top_k:
            body["top_k"] = params.top_k

        def check(reply: dict) -> list[str]:
            try:
                choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
                texts = [c["message"]["content"] or "" for c in choices]
            except (KeyError, TypeError) as e:
                raise _Transient(f"malformed completion reply: {str(reply)[:100]}") from e
            if len(texts) != params.n:
                raise _Transient(f"asked for n={params.n} completions, got {len(texts)}")
            return texts

        return self._with_retries("POST", "/chat/completions", body, check)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[str]]:
        if not prompts:
            return []
        if self.model is None:
            self.preflight()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self._one, p, params, params.seed + i) for i, p in enumerate(prompts)]
            it = futures
            if self.progress:
                from tqdm.auto import tqdm

                it = tqdm(futures, desc="sampling", unit="prompt", leave=False, disable=bar_disable())
            try:
                return [f.result() for f in it]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
