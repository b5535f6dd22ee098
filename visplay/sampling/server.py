"""`visplay serve`: an OpenAI-compatible endpoint over `TransformersSampler` (stdlib HTTP, CPU or GPU).

    visplay serve --model models/tiny --port 8000      # POST /v1/chat/completions, GET /v1/models

It exists so that the client path (`OpenAISampler`, `sampler.url`, `sampler.launch`) is exercised
for real without vLLM, and so a model can be served anywhere transformers runs. For throughput at
scale use `vllm serve` (docs/scaling.md): this server runs one request at a time (one prompt, its
``n`` samples share one prefill), which keeps results reproducible for a given seed.

Requests take ``messages`` (text parts and ``image_url`` parts holding base64 data URLs -- remote
URLs are refused, nothing is fetched), ``n``, ``temperature``, ``top_p``, ``top_k``,
``max_tokens`` and ``seed``. Images are decoded with the same hostile-input checks as the image
sources. Errors are JSON ``{"error": {"message", "type"}}`` with status 400 (bad request: also a
missing or non-numeric Content-Length, ``n`` over `Limits.max_n`, ``max_tokens`` over
`Limits.max_tokens`, ``top_p`` outside (0, 1], a seed outside [0, 2**63)), 401 (``api_key`` set and
no matching ``Authorization: Bearer``), 404, 413 (body over `Limits.max_body_bytes`) or 500. The
listen backlog is `BACKLOG`, so bursts of concurrent clients queue instead of being reset; binding
anything but loopback logs a warning (there is no TLS, and no auth unless ``api_key`` is set).
Test: `pytest tests/test_serve.py`.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from visplay.sampling.base import Prompt, SamplingParams
from visplay.data.images import ImageError, decode_image
from visplay.models import load_model

log = logging.getLogger(__name__)
#: Pending connections the kernel queues while the server is busy (Python's default of 5 resets bursts).
BACKLOG = 64
#: Largest accepted request seed (exclusive): torch seeds are 64-bit.
SEED_LIMIT = 2**63


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: the server runs one generation at a time, so an unbounded
    ``n`` or ``max_tokens`` would hold every other client up."""

    max_n: int = 128
    max_tokens: int = 8192
    max_body_bytes: int = 64 * 1024 * 1024  # a few full-size base64 images

    def __post_init__(self) -> None:
        if min(self.max_n, self.max_tokens, self.max_body_bytes) < 1:
            raise ValueError(f"serve limits must be >= 1, got {self}")


class BadRequest(ValueError):
    status = 400


class TooLarge(BadRequest):
    status = 413


def _number(body: dict, key: str, default, kind: type, lo, hi, aliases: tuple[str, ...] = ()):
    """``body[key]`` (or an alias) as ``kind`` within [lo, hi]; `BadRequest` naming the key otherwise."""
    value = next((body[k] for k in (key, *aliases) if body.get(k) is not None), default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise BadRequest(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{key} must be finite, got {value!r}")
    value = kind(value)
    if not lo <= value <= hi:
        raise BadRequest(f"{key} must be in [{lo}, {hi}], got {value}")
    return value


def _image(part: dict):
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url.startswith("data:"):
        raise BadRequest("image_url must be a base64 data URL (data:image/png;base64,...); remote URLs are not fetched")
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise BadRequest("image data URLs must be base64-encoded")
    try:
        raw = base64.b64decode(payload, validate=True)
        return decode_image(raw, where="request image")
    except (ValueError, ImageError) as e:
        raise BadRequest(f"unusable image: {e}") from e


def parse_request(body: dict, limits: Limits = Limits()) -> tuple[Prompt, SamplingParams]:
    """An OpenAI chat-completions body -> (HF-style `Prompt`, `SamplingParams`); `BadRequest` if malformed."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    out, images = [], []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise BadRequest("message content must be a string or a list of parts")
        parts = []
        for c in content:
            kind = c.get("type") if isinstance(c, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(c.get("text", ""))})
            elif kind == "image_url":
                images.append(_image(c))
                parts.append({"type": "image"})
            else:
                raise BadRequest(f"unsupported content part type {kind!r} (text and image_url are)")
        out.append({"role": m["role"], "content": parts})
    n = _number(body, "n", 1, int, 1, limits.max_n)
    temperature = _number(body, "temperature", 1.0, float, 0.0, 100.0)
    top_k = max(0, _number(body, "top_k", 0, int, -1, 2**31))  # -1 (vLLM) or 0: off
    top_p = _number(body, "top_p", 1.0, float, -math.inf, math.inf)
    if not 0 < top_p <= 1:
        raise BadRequest(f"top_p must be in (0, 1], got {top_p}")
    max_tokens = _number(body, "max_tokens", min(256, limits.max_tokens), int, 1, limits.max_tokens,
                         aliases=("max_completion_tokens",))
    seed = _number(body, "seed", 0, int, 0, SEED_LIMIT - 1)
    params = SamplingParams(n=n, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_tokens,
                            seed=seed)
    return Prompt(out, tuple(images)), params


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True


class SamplerServer:
    """Owns the sampler and the HTTP server; ``start()`` serves in a background thread (tests),
    ``serve_forever()`` in the calling one (the CLI)."""

    def __init__(self, sampler, name: str, host: str = "127.0.0.1", port: int = 0, limits: Limits = Limits(),
                 api_key: str | None = None):
        self.sampler, self.name, self.limits, self.api_key = sampler, name, limits, api_key or None
        self._lock = threading.Lock()
        self.httpd = _HTTPServer((host, port), self._handler())
        self._thread: threading.Thread | None = None
        if not is_loopback(host):
            log.warning("visplay serve listens on %s, reachable from other machines: plain HTTP, %s", host,
                        "bearer token required" if self.api_key else "no authentication (set an API key)")

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def complete(self, body: dict) -> dict:
        prompt, params = parse_request(body, self.limits)
        with self._lock:  # one generation at a time: the model is not re-entrant
            texts = self.sampler.generate([prompt], params)[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 120  # seconds a client may take to send its request (a stalled one frees its thread)

            def log_message(self, fmt, *args):  # route access logs to logging, not stderr
                log.debug("%s " + fmt, self.address_string(), *args)

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, kind: str) -> None:
                self.close_connection = True  # an unread body must not be parsed as the next request
                self._send(status, {"error": {"message": message, "type": kind}})

            def _authorized(self) -> bool:
                if server.api_key is None:
                    return True
                given = self.headers.get("Authorization", "")
                if hmac.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
                    return True
                self._error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error")
                return False

            def _body(self) -> dict:
                raw = self.headers.get("Content-Length")
                if raw is None or not raw.strip().isdigit():
                    raise BadRequest(f"Content-Length must be a number of bytes, got {raw!r}")
                length, limit = int(raw), server.limits.max_body_bytes
                if length > limit:
                    raise TooLarge(f"request body is {length:,} bytes, over this server's limit of {limit:,}")
                if length == 0:
                    raise BadRequest("request body is empty")
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise BadRequest("request body must be a JSON object")
                return body

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0].rstrip("/")
                if path not in ("/health", "/v1/health") and not self._authorized():
                    return
                if path in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.name, "object": "model",
                                                                 "owned_by": "visplay"}]})
                elif path in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                else:
                    self._error(404, f"no route {self.path}", "not_found")

            def do_POST(self):  # noqa: N802
                path = self.path.split("?")[0].rstrip("/")
                if not self._authorized():
                    return
                if path not in ("/v1/chat/completions", "/chat/completions"):
                    self._error(404, f"no route {self.path}", "not_found")
                    return
                try:
                    body = self._body()
                    model = body.get("model")
                    if model not in (None, server.name):
                        self._error(404, f"model {model!r} is not served here; this server serves {server.name!r}",
                                    "model_not_found")
                        return
                    reply = server.complete(body)
                except BadRequest as e:
                    self._error(e.status, str(e), "invalid_request_error")
                    return
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    self._error(400, f"request body is not JSON: {e}", "invalid_request_error")
                    return
                except Exception as e:  # noqa: BLE001 -- report, keep serving
                    log.exception("generation failed")
                    self._error(500, f"{type(e).__name__}: {e}", "server_error")
                    return
                self._send(200, reply)

        return Handler

    def start(self) -> "SamplerServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "SamplerServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_model(model_path: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
                dtype: str = "float32", ready: Callable[[str], None] = print, limits: Limits = Limits(),
                api_key: str | None = None) -> None:
    """Load ``model_path`` (on the GPU when there is one) and serve it until interrupted."""
    import torch

    from visplay.sampling.hf import TransformersSampler  # imports torch: only where a model is loaded here

    model, processor = load_model(model_path, dtype=getattr(torch, dtype))
    if torch.cuda.is_available():
        model = model.to("cuda")
    server = SamplerServer(TransformersSampler(model, processor), name or str(model_path), host, port, limits, api_key)
    if not is_loopback(host):
        ready(f"warning: listening on {host}, reachable from other machines over plain HTTP"
              + ("" if api_key else "; anyone who can reach it can use it (pass --api-key-env)"))
    ready(f"serving {model_path} as {server.name!r} at {server.url}")
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
