"""The `visplay` command: one subcommand per job, `main(argv) -> int` so tests call it directly.

    visplay pretrain [--out models/tiny]      rebuild the embedded model from the world
    visplay eval [--model tiny] [--n 500]     held-out world accuracy: greedy, maj@k, pass@k, prior
    visplay evolve [--run DIR] [--resume]     the self-evolution loop, with a before/after table
    visplay evolve --dry-run                  the resolved plan (stages, sizes, tokens, memory); loads nothing
    visplay serve --model PATH [--port 8000]  an OpenAI-compatible endpoint over the transformers sampler
    visplay report RUN_DIR                    one self-contained HTML page about a run
    visplay status RUN_DIR                    where a (possibly running) run stands

Every subcommand takes `--preset NAME|PATH` (alias `--config FILE.yaml`) and `--set key=value`
overrides (dotted keys, coerced to the field's type); `visplay --version` prints the version.
Errors in input (missing model, bad preset key) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from visplay import __version__
from visplay.config import REPO_ROOT, Config, ConfigError, load_config, resolve_model, to_dict
from visplay.eval.run import add_benchmark_args, run_benchmark_eval
from visplay.evolve.rundir import RunError
from visplay.io import WriteError, check_writable_dir
from visplay.report import add_report_parser
from visplay.sampling.openai import SamplerError
from visplay.status import add_status_parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", "--config", dest="preset", default="tiny",
                   help="preset name in presets/ or a YAML file (default: tiny); --config FILE.yaml is the same")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set eval.k=5 (repeatable)")


def _config(args: argparse.Namespace, extra: list[str]) -> Config:
    return load_config(args.preset, list(args.overrides) + extra)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain the tiny model on world data (resumes from its checkpoints) and save it."""
    from visplay.tiny.pretrain import pretrain

    extra = [f"pretrain.steps={args.steps}"] if args.steps else []
    cfg = _config(args, extra)
    out = Path(args.out)
    t0 = time.time()
    pretrain(out, cfg.pretrain, resume=not args.restart)
    _pretrain_card(out, cfg, args)
    print(f"pretrained model saved to {out} in {(time.time() - t0) / 60:.1f} min")
    return 0


def _pretrain_card(out: Path, cfg: Config, args: argparse.Namespace) -> None:
    """Model card, chat template and generation defaults of a `visplay pretrain` output."""
    from visplay.cards import dress_checkpoint

    p = cfg.pretrain
    dress_checkpoint(out, f"visplay tiny (pretrained, {out.name})", {
        "base model": "none: built from scratch (`visplay/tiny/build.py`, real Qwen2.5-VL architecture)",
        "stage": "pretrain (supervised, both roles)",
        "trained": f"`visplay pretrain --preset {args.preset}`: {p.steps} steps x batch {p.batch_size}, "
                   f"lr {p.lr:g} cosine, world scenes of the train split",
        "measured": f"`visplay eval --model {out}` (held-out world accuracy)",
    }, max_new_tokens=cfg.eval.max_new_tokens)


def _inapplicable_eval_flags(args: argparse.Namespace) -> str | None:
    """A flag that the chosen `visplay eval` path would ignore is an error, never a silent no-op."""
    from visplay.eval.run import add_benchmark_args

    bench = argparse.ArgumentParser(add_help=False)
    add_benchmark_args(bench)
    set_flags = [a.option_strings[0] for a in bench._actions
                 if a.dest not in ("benchmarks", "compare") and getattr(args, a.dest, a.default) != a.default]
    if not (args.benchmarks or args.compare):
        if set_flags:
            verb = "applies" if len(set_flags) == 1 else "apply"
            return (f"{', '.join(set_flags)} {verb} only with --benchmarks or --compare; the world evaluation "
                    "takes its settings from the config (e.g. --set eval.temperature=0.5, eval.max_new_tokens=64)")
        return None
    world_only = [flag for flag, on in (("--k", args.k is not None), ("--probe", args.probe),
                                        ("--sampler-url", bool(args.sampler_url))) if on]
    if world_only:
        verb = "applies" if len(world_only) == 1 else "apply"
        return f"{', '.join(world_only)} {verb} only to the world evaluation (without --benchmarks/--compare)"
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a model: held-out world scenes, or --benchmarks from parquet files (see docs/evaluation.md)."""
    wrong = _inapplicable_eval_flags(args)
    if wrong:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    if args.benchmarks or args.compare:
        return run_benchmark_eval(args)
    from visplay.eval.world import evaluate_world, write_eval
    from visplay.sampling.factory import open_sampler

    extra = [f"eval.{k}={v}" for k, v in (("n", args.n), ("k", args.k), ("seed", args.world_seed), ("split", args.split))
             if v is not None]
    if args.sampler_url:
        extra.append(f"sampler.url={args.sampler_url}")
    cfg = _config(args, extra)
    if args.out:
        check_writable_dir(args.out)  # a read-only --out fails now, not after all the sampling
    model_path = resolve_model(args.model or cfg.model)
    e = cfg.eval
    with open_sampler(cfg.sampler, model_path, progress=True) as sampler:
        result = evaluate_world(sampler, cfg.world, e.split, e.n, e.k, e.temperature, e.top_k, e.max_new_tokens,
                                e.seed, e.families, labelled_levels=cfg.labelled_levels)
        print(f"model {model_path} on {e.n} {e.split} scenes (seed {e.seed}), k={e.k}, T={e.temperature}")
        print(result.table())
        if args.probe:
            from visplay.eval.probe import trace_probe
            from visplay.eval.world import questioner_validity
            from visplay.models import load_model

            qv = questioner_validity(sampler, cfg.world, e.split, n=min(e.n, 200), seed=e.seed)
            result.summary["questioner"] = qv
            print(f"questioner at T=1.0: {qv['valid']:.1%} valid, {qv['answerable']:.1%} answerable by the oracle, "
                  f"own answer right {qv['own_answer_correct']:.1%}, {qv['distinct_questions']} distinct of {qv['n']}")
            # the probe reads logits, so it needs the weights here even when sampling went through a server
            model, processor = ((sampler.model, sampler.processor) if hasattr(sampler, "model")
                                else load_model(model_path))
            probe = trace_probe(model, processor, cfg.world, e.families, e.split, n=min(e.n, 300), seed=e.seed)
            result.summary["trace_probe"] = probe
            print("trace probe (teacher-forced decisive tokens of the marked walk), by level: " + "; ".join(
                f"{role} " + " ".join(f"{k.split('@')[1]}:{v['accuracy']:.0%}" for k, v in probe.items()
                                      if k.startswith(role + "@"))
                for role in ("perception", "comparison")))
    if args.out:
        write_eval(result, args.out, {"model": str(model_path), "config": to_dict(cfg)})
        print(f"per-item results: {Path(args.out) / 'items.parquet'}")
    return 0


def cmd_self_train(args: argparse.Namespace) -> int:
    """Self-training probe: held-out greedy before/after one round of fine-tuning on majority labels."""
    from visplay.eval.selftrain import SelfTrainProbe, run_self_train_probe

    cfg = _config(args, [])
    probe = SelfTrainProbe(**{k: v for k, v in (("n", args.n), ("k", args.k), ("eval_n", args.eval_n),
                                                ("min_agreement", args.min_agreement)) if v is not None})
    model_path = resolve_model(args.model or cfg.model)
    r = run_self_train_probe(model_path, cfg.world, cfg.eval.families, probe, args.out)
    print(f"kept {r['kept']}/{r['questions']} unlabeled questions at agreement >= {probe.min_agreement} "
          f"(labels {r['label_accuracy']:.1%} right, by the oracle; not used in training)")
    print(f"held-out greedy: {r['greedy_before']:.1%} -> {r['greedy_after']:.1%} "
          f"({100 * (r['greedy_after'] - r['greedy_before']):+.1f} points, n={probe.eval_n})")
    print(f"fine-tuned model: {Path(args.out) / 'model'}")
    return 0


def cmd_evolve(args: argparse.Namespace) -> int:
    """Run the self-evolution loop (questioner GRPO -> questions -> silver labels -> reasoner GRPO -> eval)."""
    from visplay import console

    console.set_level("quiet" if args.quiet else "verbose" if args.verbose else "normal")
    extra = [f"evolve.iterations={args.iterations}"] if args.iterations else []
    if args.model:
        extra.append(f"model={args.model}")
    if args.sampler_url:
        extra.append(f"sampler.url={args.sampler_url}")
    if args.dry_run:
        from visplay.plan import build_plan, format_plan

        cfg = _config(args, extra)
        print(format_plan(cfg, build_plan(cfg, args.preset)))
        return 0
    from visplay.evolve.loop import run_evolve, summary_table

    run_dir = Path(args.run or f"runs/{Path(args.preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.resume:
        from visplay.config import from_dict
        from visplay.evolve.rundir import RunDir

        cfg = from_dict(Config, RunDir(run_dir).manifest()["config"], f"{run_dir}/manifest.json")
    else:
        cfg = _config(args, extra)
    print(f"run directory: {run_dir}  (resume with: visplay evolve --run {run_dir} --resume)")
    try:
        results = run_evolve(cfg, run_dir, resume=args.resume, command=["visplay", *sys.argv[1:]])
    except KeyboardInterrupt:
        print(f"interrupted; continue with: visplay evolve --run {run_dir} --resume", file=sys.stderr)
        return 130
    print(summary_table(results, run_dir, cfg.evolve.eval.k))
    print(f"report: {run_dir / 'report.html'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over an OpenAI-compatible /v1/chat/completions (+ /v1/models) with the transformers sampler."""
    import os

    from visplay.models import check_model_dir
    from visplay.sampling.server import Limits, serve_model

    cfg = _config(args, [])
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visplay", description="Self-evolving vision-language models from unlabeled images.")
    parser.add_argument("--version", action="version", version=f"visplay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help=cmd_pretrain.__doc__, description=cmd_pretrain.__doc__)
    _common(p)
    p.add_argument("--out", default=str(REPO_ROOT / "models" / "tiny"), help="output model directory")
    p.add_argument("--steps", type=int, help="override pretrain.steps (e.g. a few for a smoke run)")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__)
    _common(p)
    p.add_argument("--model", help="model directory or embedded name (default: the preset's, 'tiny')")
    p.add_argument("--n", type=int, help="number of held-out questions (default 500)")
    p.add_argument("--k", type=int, help="samples per question for maj@k / pass@k (default 10)")
    p.add_argument("--world-seed", type=int, help="which held-out scenes: different seeds draw disjoint scenes")
    p.add_argument("--split", help="held-out split: heldout (default), compositional or unlabeled")
    p.add_argument("--out", help="directory for items.parquet and summary.json/md")
    p.add_argument("--probe", action="store_true", help="also run the perception probe and measure questioner validity")
    p.add_argument("--sampler-url", help="sample through an OpenAI-compatible server at this base URL (sets sampler.url)")
    add_benchmark_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("self-train", help=cmd_self_train.__doc__, description=cmd_self_train.__doc__)
    _common(p)
    p.add_argument("--model", help="model directory or embedded name (default: the preset's, 'tiny')")
    p.add_argument("--out", required=True, help="directory for self_train.json and the fine-tuned model")
    p.add_argument("--n", type=int, help="unlabeled questions to label (default 400)")
    p.add_argument("--k", type=int, help="samples per question for the vote (default 10)")
    p.add_argument("--eval-n", type=int, help="held-out questions for greedy before/after (default 300)")
    p.add_argument("--min-agreement", type=float, help="keep questions whose majority share is at least this (0.5)")
    p.set_defaults(func=cmd_self_train)

    p = sub.add_parser("evolve", help=cmd_evolve.__doc__, description=cmd_evolve.__doc__)
    _common(p)
    p.add_argument("--model", help="base model directory or embedded name (default: the preset's, 'tiny')")
    p.add_argument("--run", help="run directory (default: runs/<preset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its last finished stage")
    p.add_argument("--iterations", type=int, help="self-evolution iterations (default 3)")
    p.add_argument("--sampler-url", help="sample through an OpenAI-compatible server at this base URL "
                                          "(sets sampler.url; see sampler.launch in docs/scaling.md)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (stages, sizes, tokens, memory per GPU) without loading anything")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="no progress bars: stage summaries and the result only")
    loud.add_argument("--verbose", action="store_true", help="also print every GRPO step's full log dict")
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    _common(p)
    p.add_argument("--model", help="model directory or embedded name (default: the preset's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--served-name", help="model id reported by /v1/models (default: the model path)")
    p.add_argument("--max-n", type=int, default=128, help="most samples one request may ask for (default 128)")
    p.add_argument("--max-tokens", type=int, default=8192, help="largest max_tokens a request may ask for (default 8192)")
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body in MiB (default 64)")
    p.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on every request "
                   "(the key is read from this environment variable, never from the command line)")
    p.set_defaults(func=cmd_serve)

    add_report_parser(sub)
    add_status_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from visplay.models import denormals_flushed

    try:
        with denormals_flushed():
            return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, RunError, SamplerError, WriteError) as e:
        print(f"visplay {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"visplay {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
