"""Quick self-training probe: does the model's majority-vote headroom turn into greedy accuracy?

One round of label-free fine-tuning (rejection-sampling SFT): on questions about *unlabeled* scenes,
sample k answers, take the majority answer as the label, keep questions whose agreement is at least
``min_agreement``, and fine-tune on one sampled chain per question that reaches the majority.
Held-out greedy accuracy before and after says within minutes whether the loop has something to
convert; the oracle is only used to report how right the labels were, never to train.
Settings: the config tree's ``self_train`` section. The fine-tuning is the loop's SFT objective
(`visplay.evolve.sft.train_sft`). Run: `visplay self-train --model tiny`;
test: `pytest tests/test_selftrain.py`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from visplay.answers import vote

from visplay.eval.world import EvalConfig, eval_items, evaluate_world
from visplay.roles.parsing import parse_reasoner
from visplay.roles.prompts import reasoner_messages
from visplay.sampling.base import Prompt
from visplay.worlds.questions import grade
from visplay.worlds.scene import WorldConfig
from visplay.settings import ConfigError
from visplay.evolve.sft import train_sft
from visplay.io import atomic_write_json
from visplay.models import denormals_flushed, load_model


@dataclass
class SelfTrainConfig:
    """`visplay self-train`: one round of rejection-sampling SFT on majority labels of unlabeled
    questions, measured by held-out greedy accuracy before and after (`visplay.evolve.self_train`)."""

    n: int = 400  # unlabeled questions to label
    k: int = 10  # samples per question for the vote
    min_agreement: float = 0.5
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-4
    eval_n: int = 300  # held-out questions for greedy before/after
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_agreement <= 1:
            raise ConfigError(f"self_train.min_agreement must be in (0, 1], got {self.min_agreement}")
        if min(self.n, self.k, self.epochs, self.batch_size, self.eval_n) < 1 or not self.lr > 0:
            raise ConfigError("self_train: n, k, epochs, batch_size and eval_n must be >= 1 and lr > 0")


def majority_chains(sampler, world: WorldConfig, probe: SelfTrainConfig, settings: EvalConfig
                    ) -> tuple[list[dict], dict]:
    """Label-free training rows (one chain per kept question) and label statistics (oracle-graded);
    questions of ``settings.families``, sampled with its knobs."""
    items = eval_items("unlabeled", probe.n, world, tuple(settings.families), probe.seed)
    prompts = [Prompt(reasoner_messages(q.text), (scene.render(),)) for scene, q in items]
    ballots = vote(sampler, prompts, probe.k, settings.params(probe.k, seed=probe.seed))
    rng = random.Random(probe.seed)
    rows, kept_right = [], 0
    for (scene, q), b in zip(items, ballots):
        label = b.label
        if label is None or b.agreement < probe.min_agreement:
            continue
        chains = [s for s, a in zip(b.samples, b.answers) if a == label and parse_reasoner(s).format_ok]
        if not chains:
            continue
        kept_right += grade(q.text, label, q.answer)
        rows.append({"messages": reasoner_messages(q.text), "target": rng.choice(chains), "image": scene.render()})
    stats = {"questions": len(items), "kept": len(rows), "label_accuracy": kept_right / len(rows) if rows else 0.0}
    return rows, stats


def finetune(model, processor, rows: list[dict], probe: SelfTrainConfig, out_dir: Path):
    """Supervised fine-tuning on ``rows`` (loss on the completion only), saved to ``out_dir/model``:
    the loop's SFT phase (`visplay.evolve.sft.train_sft`) with the probe's settings."""
    train_sft(model, processor, rows, Path(out_dir) / "model", epochs=probe.epochs, batch_size=probe.batch_size,
              lr=probe.lr, seed=probe.seed)
    return model


def run_self_train_probe(model_path: str | Path, world: WorldConfig, settings: EvalConfig, probe: SelfTrainConfig,
                         out_dir: str | Path) -> dict:
    """Greedy held-out accuracy (``settings.split``: the config's ``eval`` section) before and after
    one round of majority-label fine-tuning (``probe``: the ``self_train`` section), on ``world``
    with the eval's families and knobs."""
    from visplay.sampling.hf import TransformersSampler  # imports torch: only where a model is loaded here

    out = Path(out_dir)
    held_out = dataclasses.replace(settings, n=probe.eval_n, seed=probe.seed + 1)
    model, processor = load_model(model_path)  # in process: the probe fine-tunes these very weights
    with denormals_flushed():
        sampler = TransformersSampler(model, processor, progress=True)
        before = evaluate_world(sampler, world, held_out, greedy_only=True)
        rows, stats = majority_chains(sampler, world, probe, settings)
        if not rows:
            raise ValueError(f"no question reached agreement >= {probe.min_agreement}; nothing to fine-tune on")
        finetune(model, processor, rows, probe, out)
        after = evaluate_world(sampler, world, held_out, greedy_only=True)
    result = {
        "model": str(model_path), "probe": asdict(probe), **stats,
        "greedy_before": before.summary["overall"]["greedy"], "greedy_after": after.summary["overall"]["greedy"],
        "by_family": {f: {"before": s["greedy"], "after": after.summary["by_family"].get(f, {}).get("greedy")}
                      for f, s in before.summary["by_family"].items()},
    }
    atomic_write_json(out / "self_train.json", result)
    return result
