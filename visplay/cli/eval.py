"""`visplay eval`: held-out world accuracy (default), or `--benchmarks` (the paper's table), or `--compare`.

Every setting is a key of the config tree (`eval`, `bench`, `judge`, `sampler`); the flags below are
shorthands for them (`FLAG_KEYS`). A flag that means nothing on the chosen path is an error, never a
silent no-op. Both paths open their sampler through `visplay.sampling.factory.open_sampler`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from visplay.cli.common import add_common, add_sampler_url, config, server_sets, sets
from visplay.config import Config, resolve_model, to_dict
from visplay.eval.benchmarks import registry
from visplay.eval.run import compare_runs
from visplay.io import check_writable_dir
from visplay.eval.world import evaluate_world, write_eval
from visplay.sampling.factory import open_sampler
from visplay.eval.world import questioner_validity
from visplay.models import load_model
from visplay.eval.benchmarks import resolve_benchmarks, with_options
from visplay.eval.judge import JudgeClient
from visplay.eval.run import EvalError, evaluate_benchmarks, model_identity
from visplay.models import check_model_dir
from visplay.sampling.openai import display_url

#: flag -> the config key it sets for the world evaluation / for --benchmarks (a flag missing from a
#: path's table does not apply there). With --benchmarks, the eval.* keys shape the `world` benchmark.
WORLD_KEYS = {"n": "eval.n", "k": "eval.k", "world_seed": "eval.seed", "split": "eval.split",
              "temperature": "eval.temperature", "max_new_tokens": "eval.max_new_tokens"}
BENCH_KEYS = {
    **{d: WORLD_KEYS[d] for d in ("n", "world_seed", "split")}, "sampling_seed": "bench.seed",
    **{d: f"bench.{d}" for d in ("temperature", "max_new_tokens", "limit", "batch_size", "min_pixels", "max_pixels",
                                 "grader_timeout", "grader_workers")},
    **{f"judge_{k}": f"judge.{k}" for k in ("url", "model", "api_key_env", "cache", "prompt", "workers")},
}
FLAG_KEYS = {"world": WORLD_KEYS, "bench": BENCH_KEYS}
KEY_FLAGS = (*dict.fromkeys([*WORLD_KEYS, *BENCH_KEYS]),)  # every flag that sets a config key, once
#: flags that are not config keys, and the paths they belong to
WORLD_ONLY, BENCH_ONLY = ("probe",), ("data_dir",)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=run.__doc__, description=run.__doc__)
    add_common(p)
    p.add_argument("--out", help="directory for the per-item results and summary.json/md (required with --benchmarks)")
    add_sampler_url(p)
    w = p.add_argument_group("world evaluation (also the `world` benchmark's questions)")
    w.add_argument("--n", type=int, help="sets eval.n: held-out questions")
    w.add_argument("--k", type=int, help="sets eval.k: samples per question for maj@k / pass@k")
    w.add_argument("--world-seed", type=int, help="sets eval.seed: which held-out scenes (seeds draw disjoint sets)")
    w.add_argument("--split", help="sets eval.split: heldout, compositional or unlabeled")
    w.add_argument("--probe", action="store_true", help="also run the trace probe and measure questioner validity")
    g = p.add_argument_group("benchmarks (paper table; see docs/evaluation.md)")
    g.add_argument("--benchmarks", metavar="LIST",
                   help="comma-separated: " + ",".join(registry()) + "; 'all' = the paper's seven; or pkg.mod:obj")
    g.add_argument("--data-dir", help="folder holding <name>.parquet or <name>/*.parquet for each benchmark")
    g.add_argument("--temperature", type=float, help="sets eval.temperature, or bench.temperature (0 = greedy)")
    g.add_argument("--max-new-tokens", type=int, help="sets eval.max_new_tokens, or bench.max_new_tokens")
    g.add_argument("--sampling-seed", type=int, help="sets bench.seed: the generation seed")
    g.add_argument("--limit", type=int, help="sets bench.limit: only the first N items of each benchmark")
    g.add_argument("--batch-size", type=int, help="sets bench.batch_size: items per generation batch")
    g.add_argument("--min-pixels", type=int, help="sets bench.min_pixels: upscale smaller images")
    g.add_argument("--max-pixels", type=int, help="sets bench.max_pixels: downscale larger images")
    g.add_argument("--grader-timeout", type=float, help="sets bench.grader_timeout: seconds per math comparison")
    g.add_argument("--grader-workers", type=int, help="sets bench.grader_workers: 0 = in-process, no timeout")
    g.add_argument("--judge-url", help="sets judge.url: OpenAI-compatible API base (enables the LLM judge)")
    g.add_argument("--judge-model", help="sets judge.model: the model name to ask at --judge-url")
    g.add_argument("--judge-api-key-env", help="sets judge.api_key_env: the variable holding the judge's key "
                   "(default VISPLAY_JUDGE_API_KEY); never pass keys as flags")
    g.add_argument("--judge-cache", help="sets judge.cache: verdict cache (default OUT/judge_cache.jsonl)")
    g.add_argument("--judge-prompt", help="sets judge.prompt: the judge's prompt template")
    g.add_argument("--judge-workers", type=int, help="sets judge.workers: concurrent judge requests")
    g.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="print the table of stored runs; generates nothing")
    g.add_argument("--metric", choices=("accuracy", "rule"), help="with --compare: final (judge) or rule-based")
    p.set_defaults(func=run)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_flags(args: argparse.Namespace, path: str) -> None:
    """A flag the chosen path would ignore is an error (ValueError, one line)."""
    given = lambda dests: [_flag(d) for d in dests if getattr(args, d) not in (None, False)]  # noqa: E731
    if path == "compare":
        wrong = given([*KEY_FLAGS, *WORLD_ONLY, *BENCH_ONLY, "model", "out", "sampler_url"]) + (
            ["--set"] if args.overrides else [])
        where = "--compare prints the table of stored runs and generates nothing"
    else:
        if args.metric is not None:
            raise ValueError("--metric applies only with --compare")
        wrong = given([d for d in KEY_FLAGS if d not in FLAG_KEYS[path]]
                      + list(BENCH_ONLY if path == "world" else WORLD_ONLY))
        where = ("without --benchmarks the world evaluation runs" if path == "world"
                 else "with --benchmarks the benchmark evaluation runs")
    if wrong:
        raise ValueError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply: {where}")


def run(args: argparse.Namespace) -> int:
    """Evaluate a model: held-out world scenes, or --benchmarks from parquet files (see docs/evaluation.md)."""
    path = "compare" if args.compare else "bench" if args.benchmarks else "world"
    _check_flags(args, path)
    if path == "compare":
        print(compare_runs(args.compare, args.metric or "accuracy"), end="")
        return 0
    keys = sets((key, getattr(args, dest)) for dest, key in FLAG_KEYS[path].items())
    cfg = config(args, keys + server_sets(args.sampler_url))
    if args.out:
        check_writable_dir(args.out)  # a read-only --out fails now, not after all the sampling
    return _world(args, cfg) if path == "world" else _benchmarks(args, cfg)


def _world(args: argparse.Namespace, cfg: Config) -> int:
    model_path = resolve_model(args.model or cfg.model)
    e = cfg.eval
    log = Path(args.out) / "sampler.server.log" if args.out else None  # a launched server's output
    with open_sampler(cfg.sampler, model_path, cfg.dtype, progress=True, log_path=log) as sampler:
        result = evaluate_world(sampler, cfg.world, e, labelled_levels=cfg.labelled_levels)
        print(f"model {model_path} on {e.n} {e.split} scenes (seed {e.seed}), k={e.k}, T={e.temperature}")
        print(result.table())
        if args.probe:
            result.summary.update(_probe(sampler, model_path, cfg))
    if args.out:
        write_eval(result, args.out, {"model": str(model_path), "config": to_dict(cfg)})
        print(f"per-item results: {Path(args.out) / 'items.parquet'}")
    return 0


def _probe(sampler, model_path: Path, cfg: Config) -> dict:
    """Questioner validity and the teacher-forced trace probe, printed and returned for the summary."""
    from visplay.eval.probe import trace_probe  # imports torch: only for --probe

    e = cfg.eval
    qv = questioner_validity(sampler, cfg.world, e.split, n=min(e.n, 200), seed=e.seed)
    print(f"questioner at T=1.0: {qv['valid']:.1%} valid, {qv['answerable']:.1%} answerable by the oracle, "
          f"own answer right {qv['own_answer_correct']:.1%}, {qv['distinct_questions']} distinct of {qv['n']}")
    # the probe reads logits, so it needs the weights here even when sampling went through a server
    model, processor = (sampler.model, sampler.processor) if hasattr(sampler, "model") else load_model(model_path)
    probe = trace_probe(model, processor, cfg.world, e.families, e.split, n=min(e.n, 300), seed=e.seed)
    print("trace probe (teacher-forced decisive tokens of the marked walk), by level: " + "; ".join(
        f"{role} " + " ".join(f"{k.split('@')[1]}:{v['accuracy']:.0%}" for k, v in probe.items()
                              if k.startswith(role + "@"))
        for role in ("perception", "comparison")))
    return {"questioner": qv, "trace_probe": probe}


def _benchmarks(args: argparse.Namespace, cfg: Config) -> int:
    benchmarks = resolve_benchmarks(args.benchmarks)
    if not args.out:
        raise EvalError("--out RUN_DIR is required with --benchmarks (items.jsonl and summary.md go there)")
    out = Path(args.out)
    e = cfg.eval
    world = {"n": e.n, "seed": e.seed, "split": e.split, "world": cfg.world, "families": tuple(e.families)}
    benchmarks = [with_options(b, **world) if b.answer_type == "world" else b for b in benchmarks]
    judge = (JudgeClient(cfg.judge, Path(cfg.judge.cache) if cfg.judge.cache else out / "judge_cache.jsonl")
             if cfg.judge.enabled else None)
    name = args.model or cfg.model
    if cfg.sampler.in_process or cfg.sampler.launch:  # the weights are read here (or by the launched server)
        model_path = check_model_dir(resolve_model(name))
        identity, meta = model_identity(model_path), {"model_path": str(model_path)}
    else:  # a server that already runs: it holds the weights; the name is what the user calls them
        model_path, identity = resolve_model(name), f"{display_url(cfg.sampler.url)}|{name}"
        meta = {"model_path": str(model_path), "sampler_url": display_url(cfg.sampler.url)}

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:  # the sampler is opened on first use: a fully cached rerun loads nothing
        result = evaluate_benchmarks(
            benchmarks, args.data_dir, out,
            lambda: stack.enter_context(open_sampler(cfg.sampler, model_path, cfg.dtype, progress=True,
                                                     log_path=out / "sampler.server.log")),
            cfg.bench, judge, identity, meta, progress)
    print(result.markdown, end="")
    print(f"\nper-item results: {out / 'items.jsonl'}; summary: {out / 'summary.md'}")
    return 0
