"""`visplay serve`: an OpenAI-compatible endpoint over the transformers sampler (tests, small deployments)."""

from __future__ import annotations

import argparse
import os

from visplay.cli.common import add_common, config
from visplay.config import resolve_model
from visplay.models import check_model_dir
from visplay.sampling.server import Limits, serve_model


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=run.__doc__, description=run.__doc__)
    add_common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--served-name", help="model id reported by /v1/models (default: the model path)")
    p.add_argument("--max-n", type=int, default=128, help="most samples one request may ask for (default 128)")
    p.add_argument("--max-tokens", type=int, default=8192, help="largest max_tokens a request may ask for (default 8192)")
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body in MiB (default 64)")
    p.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on every request "
                   "(the key is read from this environment variable, never from the command line)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve a model over an OpenAI-compatible /v1/chat/completions (+ /v1/models) with the transformers sampler."""
    cfg = config(args)
    path = check_model_dir(resolve_model(args.model or cfg.model))
    limits = Limits(max_n=args.max_n, max_tokens=args.max_tokens, max_body_bytes=args.max_body_mb * 1024 * 1024)
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    serve_model(str(path), args.host, args.port, name=args.served_name, dtype=cfg.dtype,
                ready=lambda line: print(line, flush=True), limits=limits, api_key=key)
    return 0
