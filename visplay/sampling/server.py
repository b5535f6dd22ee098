"""`visplay serve`: an OpenAI-compatible endpoint over `TransformersSampler` (stdlib HTTP, CPU or GPU).

    visplay serve --model models/tiny --port 8000      # POST /v1/chat/completions, GET /v1/models

It exists so that the client path (`OpenAISampler`, `sampler.url`, `sampler.launch`) is exercised
for real without vLLM, and so a model can be served anywhere transformers runs. For throughput at
scale use `vllm serve` (docs/scaling.md): this server runs one request at a time (one prompt, its
``n`` samples share one prefill), which keeps results reproducible for a given seed.

Requests take ``messages`` (text parts and ``image_url`` parts holding base64 data URLs -- remote
URLs are refused, nothing is fetched), ``n``, ``temperature``, ``top_p``, ``top_k``,
``max_tokens`` and ``seed``. Images are decoded with the same hostile-input checks as the image
sources. Errors are JSON ``{"error": {"message", "type"}}`` with status 400 (bad request), 404 or
500. Test: `pytest tests/test_serve.py`.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from visplay.sampling.base import Prompt, SamplingParams

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024 * 1024


class BadRequest(ValueError):
    pass


def _image(part: dict):
    from visplay.data.images import ImageError, decode_image

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


def parse_request(body: dict) -> tuple[Prompt, SamplingParams]:
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
    try:
        params = SamplingParams(
            n=int(body.get("n", 1)), temperature=float(body.get("temperature", 1.0)),
            top_k=max(0, int(body.get("top_k") or 0)), top_p=float(body.get("top_p", 1.0)),
            max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
            seed=int(body.get("seed") or 0),
        )
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad sampling parameter: {e}") from e
    return Prompt(out, tuple(images)), params


class SamplerServer:
    """Owns the sampler and the HTTP server; ``start()`` serves in a background thread (tests),
    ``serve_forever()`` in the calling one (the CLI)."""

    def __init__(self, sampler, name: str, host: str = "127.0.0.1", port: int = 0):
        self.sampler, self.name = sampler, name
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def complete(self, body: dict) -> dict:
        prompt, params = parse_request(body)
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
                self._send(status, {"error": {"message": message, "type": kind}})

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0].rstrip("/")
                if path in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.name, "object": "model",
                                                                 "owned_by": "visplay"}]})
                elif path in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                else:
                    self._error(404, f"no route {self.path}", "not_found")

            def do_POST(self):  # noqa: N802
                path = self.path.split("?")[0].rstrip("/")
                if path not in ("/v1/chat/completions", "/chat/completions"):
                    self._error(404, f"no route {self.path}", "not_found")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    if not 0 < length <= MAX_BODY_BYTES:
                        raise BadRequest(f"request body must be 1..{MAX_BODY_BYTES} bytes, got {length}")
                    body = json.loads(self.rfile.read(length))
                    if not isinstance(body, dict):
                        raise BadRequest("request body must be a JSON object")
                    model = body.get("model")
                    if model not in (None, server.name):
                        self._error(404, f"model {model!r} is not served here; this server serves {server.name!r}",
                                    "model_not_found")
                        return
                    reply = server.complete(body)
                except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as e:
                    self._error(400, str(e), "invalid_request_error")
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
                dtype: str = "float32", ready: Callable[[str], None] = print) -> None:
    """Load ``model_path`` (on the GPU when there is one) and serve it until interrupted."""
    import torch

    from visplay.models import load_model
    from visplay.sampling.hf import TransformersSampler

    model, processor = load_model(model_path, dtype=getattr(torch, dtype))
    if torch.cuda.is_available():
        model = model.to("cuda")
    server = SamplerServer(TransformersSampler(model, processor), name or str(model_path), host, port)
    ready(f"serving {model_path} as {server.name!r} at {server.url}")
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
