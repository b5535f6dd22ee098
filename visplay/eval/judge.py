"""LLM judge over an OpenAI-compatible chat-completions endpoint, with retries and an on-disk cache.

``JudgeClient(JudgeConfig(url="http://host:8000/v1", model="..."), cache_path)`` (the config tree's
``judge`` section, `visplay.config.JudgeConfig`) asks the judge
whether a candidate answer means the same as the reference, at temperature 0, with the prompt in
``prompts/judge.txt`` (``{question}``, ``{reference}``, ``{candidate}`` are filled in one pass, so
braces in LaTeX answers are safe). The reply's last ``CORRECT``/``INCORRECT`` is the verdict.

* The API key is read from the environment variable named by ``api_key_env`` (default
  ``VISPLAY_JUDGE_API_KEY``) and only ever goes into the ``Authorization`` header: never into
  logs, errors (server text is redacted), the cache, ``repr`` or any output file. URLs are shown
  without credentials or query strings; a URL carrying ``user:pass@`` is refused.
* ``preflight()`` checks the endpoint before any generation starts (``GET /models``): an
  unreachable host, a rejected key or a model the server does not serve is a ``JudgeError`` then,
  not hours later.
* Transient failures (connection errors, timeouts, HTTP 429 and 5xx, malformed replies) are
  retried with exponential backoff (``backoff * 2**attempt``, capped; ``Retry-After`` honoured);
  other HTTP errors fail at once. When retries run out, ``JudgeError`` says to rerun: every
  verdict obtained so far is cached.
* The cache is an append-only jsonl (``visplay.eval.store.AppendLog``) keyed by
  sha256(question, reference, candidate, judge model, prompt hash): a rerun or a resumed run
  asks only for pairs it has never seen, and editing the prompt invalidates old verdicts.

Only the standard library is used (``urllib``). Test: ``pytest -q tests/test_judge.py`` (a real
HTTP server on 127.0.0.1, no network).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from visplay.eval.store import AppendLog
from visplay.sampling.openai import display_url
from visplay.settings import REPO_ROOT, ConfigError, base_url


DEFAULT_JUDGE_KEY_ENV = "VISPLAY_JUDGE_API_KEY"


@dataclass
class JudgeConfig:
    """The LLM judge of judged benchmarks (`visplay.eval.judge`): off until ``url`` and ``model`` are
    set. ``url`` is an OpenAI-compatible API base, e.g. ``http://host:8000/v1``; the key is read from
    the environment variable ``api_key_env`` names, never from a config or the command line."""

    url: str | None = None
    model: str | None = None
    api_key_env: str = DEFAULT_JUDGE_KEY_ENV
    prompt: str = "prompts/judge.txt"  # template with {question}, {reference}, {candidate}; relative = to the repo
    cache: str | None = None  # verdict cache (default: OUT/judge_cache.jsonl); share it across runs
    timeout: float = 60.0  # seconds per request
    max_retries: int = 5  # retries after the first attempt, for transient failures
    backoff: float = 1.0  # first wait in seconds; doubles each retry
    max_backoff: float = 30.0
    max_tokens: int = 512
    workers: int = 4  # concurrent requests

    def __post_init__(self) -> None:
        if (self.url is None) != (self.model is None) or self.model == "":
            raise ConfigError("judge.url and judge.model go together (--judge-url with --judge-model: the model "
                              "name the endpoint serves)")
        if self.url is not None:
            parts = base_url("judge.url", self.url)
            if parts.username or parts.password:
                raise ConfigError(f"judge.url must not carry credentials; put the API key in ${self.api_key_env}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or ""):
            raise ConfigError(f"judge.api_key_env must be an environment variable name, got {self.api_key_env!r}")
        if self.timeout <= 0 or self.max_retries < 0 or self.backoff < 0 or self.workers < 1 or self.max_tokens < 1:
            raise ConfigError("judge timeout, backoff, max_tokens and workers must be positive, max_retries >= 0")

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def prompt_path(self) -> Path:
        path = Path(self.prompt).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def base(self) -> str:
        """The API base without a trailing slash or a pasted ``/chat/completions``."""
        base = (self.url or "").rstrip("/")
        return base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base


log = logging.getLogger(__name__)

_FIELDS = re.compile(r"\{(question|reference|candidate)\}")
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b")


class JudgeError(RuntimeError):
    """The judge cannot be used (unreachable, key rejected, retries exhausted, bad prompt)."""


@dataclass(frozen=True)
class JudgeVerdict:
    correct: bool
    reason: str  # "judge_correct", "judge_incorrect" or "judge_unparseable"
    cached: bool = False


def load_prompt(path: str | Path) -> str:
    """The judge prompt template; it must contain ``{question}``, ``{reference}`` and ``{candidate}``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise JudgeError(f"cannot read the judge prompt {p}: {e}") from e
    missing = {"question", "reference", "candidate"} - set(_FIELDS.findall(text))
    if missing:
        raise JudgeError(f"judge prompt {p} lacks placeholder(s) {', '.join('{' + m + '}' for m in sorted(missing))}")
    return text


def fill_prompt(template: str, question: str, reference: str, candidate: str) -> str:
    """Fill the three placeholders in one pass (text inserted is never re-scanned).

    >>> fill_prompt("Q {question} R {reference} C {candidate}", "x{candidate}", "1", r"\\frac{1}{2}")
    'Q x{candidate} R 1 C \\\\frac{1}{2}'
    """
    values = {"question": question, "reference": reference, "candidate": candidate}
    return _FIELDS.sub(lambda m: values[m.group(1)], template)


def parse_verdict(text: str | None) -> bool | None:
    """The last CORRECT/INCORRECT in the reply (or a bare yes/no/1/0); None if there is none.

    >>> parse_verdict("Reasoning... CORRECT"), parse_verdict("incorrect."), parse_verdict("hmm")
    (True, False, None)
    """
    if not isinstance(text, str):
        return None
    found = _VERDICT.findall(text.upper())
    if found:
        return found[-1] == "CORRECT"
    bare = text.strip().strip(".").lower()
    return True if bare in ("1", "yes", "true") else False if bare in ("0", "no", "false") else None


def cache_key(question: str, reference: str, candidate: str, model: str, prompt_sha: str) -> str:
    blob = json.dumps([question, reference, candidate, model, prompt_sha], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _Transient(Exception):
    """A failure worth retrying; carries an optional server-requested delay."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class JudgeClient:
    """Asks the judge, with retries, through the cache at ``cache_path``. See the module docstring."""

    config: JudgeConfig
    cache_path: Path
    sleep: Callable[[float], None] = time.sleep
    _key: str | None = field(default=None, init=False, repr=False)
    _template: str = field(default="", init=False, repr=False)
    _cache: dict[str, dict] = field(default_factory=dict, init=False, repr=False)
    _log: AppendLog | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.config.enabled:
            raise JudgeError("the judge is off: set judge.url and judge.model (--judge-url, --judge-model)")
        self.cache_path = Path(self.cache_path)
        self._key = os.environ.get(self.config.api_key_env) or None
        self._template = load_prompt(self.config.prompt_path)
        self._log = AppendLog(self.cache_path)
        self._cache = {r["key"]: r for r in self._log.read() if isinstance(r.get("key"), str) and "correct" in r}

    def __repr__(self) -> str:  # never shows the key
        return (f"JudgeClient(url={display_url(self.config.base)!r}, model={self.config.model!r}, "
                f"cache={str(self.cache_path)!r})")

    # -- public
    @property
    def prompt_sha(self) -> str:
        return hashlib.sha256(self._template.encode("utf-8")).hexdigest()[:12]

    def describe(self) -> dict:
        """What a summary may record about the judge (no key, no credentials)."""
        return {"url": display_url(self.config.base), "model": self.config.model, "prompt_sha": self.prompt_sha,
                "api_key_env": self.config.api_key_env}

    def key(self, question: str, reference: str, candidate: str) -> str:
        return cache_key(question, reference, candidate, self.config.model, self.prompt_sha)

    def is_cached(self, question: str, reference: str, candidate: str) -> bool:
        return self.key(question, reference, candidate) in self._cache

    def preflight(self) -> None:
        """Fail now, before generation, if the endpoint is unreachable or refuses us."""
        if self._key is None:
            log.info("judge: $%s is not set; requests carry no Authorization header", self.config.api_key_env)
        try:
            reply = self._request("GET", "/models", None, retries=min(2, self.config.max_retries), allow_404=True,
                                  hint="check --judge-url", timeout=min(10.0, self.config.timeout))
        except JudgeError as e:
            raise JudgeError(f"{e} (checked before any generation; nothing was generated)") from None
        served = [m.get("id") for m in (reply or {}).get("data", []) if isinstance(m, dict)]
        if served and self.config.model not in served:
            shown = ", ".join(map(str, served[:10])) + (" ..." if len(served) > 10 else "")
            raise JudgeError(f"judge at {display_url(self.config.base)} does not serve --judge-model "
                             f"{self.config.model!r}; it serves: {shown}")

    def judge_many(self, triples: Sequence[tuple[str, str, str]]) -> list[JudgeVerdict]:
        """Verdicts for (question, reference, candidate) triples, in order; each distinct one asked once."""
        keys = [self.key(*t) for t in triples]
        todo = {k: t for k, t in zip(keys, triples) if k not in self._cache}
        cached = set(keys) - set(todo)
        if todo:
            log.info("judge: %d new verdict(s) to ask, %d cached", len(todo), len(cached))
            with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
                futures = [pool.submit(self._judge_one, k, *t) for k, t in todo.items()]
                try:
                    for future in futures:
                        future.result()
                except BaseException:  # stop asking; verdicts obtained so far are already cached
                    for future in futures:
                        future.cancel()
                    raise
        return [self._verdict(k, k in cached) for k in keys]

    # -- internals
    def _verdict(self, key: str, cached: bool) -> JudgeVerdict:
        record = self._cache[key]
        return JudgeVerdict(bool(record["correct"]), record["reason"], cached)

    def _judge_one(self, key: str, question: str, reference: str, candidate: str) -> None:
        prompt = fill_prompt(self._template, question, reference, candidate)
        payload = {"model": self.config.model, "temperature": 0, "max_tokens": self.config.max_tokens,
                   "messages": [{"role": "user", "content": prompt}]}
        hint = f"verdicts so far are cached in {self.cache_path}; rerun the same command to resume"
        reply = self._request("POST", "/chat/completions", payload, retries=self.config.max_retries, hint=hint)
        text = _reply_text(reply)  # present: _once retries replies without one
        verdict = parse_verdict(text)
        reason = "judge_unparseable" if verdict is None else ("judge_correct" if verdict else "judge_incorrect")
        record = {"key": key, "model": self.config.model, "prompt_sha": self.prompt_sha, "correct": bool(verdict),
                  "reason": reason, "reply": self._redact(text or "")[:500]}
        self._log.append([record])
        self._cache[key] = record

    def _request(self, method: str, path: str, payload: dict | None, retries: int, allow_404: bool = False,
                 hint: str = "", timeout: float | None = None) -> dict | None:
        url = self.config.base + path
        for attempt in range(retries + 1):
            try:
                return self._once(method, url, payload, allow_404, timeout or self.config.timeout)
            except _Transient as e:
                if attempt == retries:
                    raise JudgeError(f"judge at {display_url(url)} failed {attempt + 1} time(s), last: {e}; {hint}") from None
                delay = min(self.config.max_backoff, self.config.backoff * 2**attempt)
                if e.retry_after is not None:
                    delay = min(self.config.max_backoff, max(delay, e.retry_after))
                log.warning("judge: %s; retry %d/%d in %.1fs", e, attempt + 1, retries, delay)
                self.sleep(delay)
        return None  # unreachable: the loop returns or raises

    def _once(self, method: str, url: str, payload: dict | None, allow_404: bool, timeout: float) -> dict | None:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            detail = self._redact(_safe_body(e))[:300]  # masked first: a cut can never leave part of the key
            if e.code == 404 and allow_404:
                return None
            if e.code == 429 or e.code >= 500:
                raise _Transient(f"HTTP {e.code} {detail}", _retry_after(e.headers.get("Retry-After"))) from None
            if e.code in (401, 403):
                raise JudgeError(f"judge at {display_url(url)} refused the request (HTTP {e.code}): check the key "
                                 f"in ${self.config.api_key_env}. {detail}") from None
            raise JudgeError(f"judge at {display_url(url)} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Transient(f"unreachable: {self._redact(str(reason))}") from None
        try:
            reply = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Transient(f"reply is not JSON: {self._redact(body.decode('utf-8', 'replace'))[:200]!r}") from None
        if payload is not None and not isinstance(_reply_text(reply), str):
            raise _Transient("reply has no choices[0].message.content")
        return reply if isinstance(reply, dict) else None

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _reply_text(reply: dict | None) -> str | None:
    try:
        return reply["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None


def _safe_body(e: urllib.error.HTTPError, limit: int = 1 << 16) -> str:
    """The error body, read up to ``limit`` bytes; the caller masks the key, then shortens it."""
    try:
        return e.read(limit).decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - a broken error body must not hide the status
        return ""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
