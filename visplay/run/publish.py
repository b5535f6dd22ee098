"""A run's outputs that explain themselves: the card rows of a GRPO phase's model, an iteration's
dataset card, and the run's final model.

An iteration folder of a run gets a dataset card (`write_dataset_card`) whose ``configs`` make
``datasets.load_dataset("runs/X/iter1", "labels")`` load that iteration's questions or labels
(with the image column decoded as an ``Image``). `final_model` finds a run's last reasoner. The
checkpoint's own files (chat template, generation defaults, model card) are `visplay.model_files`.
Test: `pytest tests/test_model_files.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from visplay.model_files import CARD
from visplay.io import atomic_write_text
from visplay.run.rundir import RunDir, marked_done
from visplay.run.stages import CHUNKED_STAGES, parse_stage, split_stage, stage_at, stage_name


def _manifest(run_root: Path) -> dict | None:
    try:
        return json.loads((run_root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def phase_card_info(out_dir: Path, role: str, phase, start: str | Path | None) -> tuple[str, dict]:
    """Title and table rows for a GRPO phase saved to ``out_dir`` = ``<run>/iter<t>/<role>``."""
    out_dir = Path(out_dir)
    run_root, stage = out_dir.parent.parent, stage_at(out_dir)
    split = split_stage(stage)
    manifest = _manifest(run_root) or {}
    config = manifest.get("config") or {}
    reward = ("0.9 x agreement with the majority-vote silver label + 0.1 x format" if role == "reasoner" else
              "uncertainty of the frozen reasoner's answers minus a diversity penalty (VisPlay)")
    info = {
        "base model": config.get("model"),
        "run": str(run_root),
        "iteration": str(split[0]) if split else out_dir.parent.name,
        "stage": f"{stage} ({role} GRPO)",
        "started from": str(start) if start else None,
        "trained": (f"GRPO (TRL GRPOTrainer): {phase.steps} steps of {phase.prompts_per_step} prompts x "
                    f"{phase.num_generations} samples, lr {phase.lr:g}, KL beta {phase.beta:g}, "
                    f"T={phase.temperature:g}, top_k {phase.top_k}"
                    + (f"; LoRA (lora rank {phase.lora_rank}, alpha {phase.lora_scale_alpha:g}, dropout "
                       f"{phase.lora_dropout:g}), saved merged into the weights" if phase.lora else "")),
        "reward": reward,
        "measured": f"`{run_root / out_dir.parent.name / 'eval' / 'summary.json'}` (held-out greedy, maj@k) "
                    f"and `{run_root / 'report.html'}`" if role == "reasoner" else f"`{run_root / 'report.html'}`",
    }
    return f"visplay {stage}", info


def final_model(run_root: str | Path) -> Path | None:
    """The last finished reasoner of the run at ``run_root`` (None: not a run, or no reasoner yet)."""
    run_root = Path(run_root)
    manifest = _manifest(run_root)
    if manifest is None:
        return None
    done = [(split[0], info) for s, info in manifest.get("stages", {}).items()
            if (split := split_stage(s)) and split[1] == "reasoner" and marked_done(info)]
    if not done:
        return None
    t, info = max(done, key=lambda x: x[0])
    model = Path(info.get("model") or RunDir(run_root).output(stage_name(t, "reasoner")))
    here = run_root / model.parent.name / model.name  # the run may have moved since, or cwd differ
    return here if here.is_dir() else model


def write_dataset_card(iter_dir: str | Path) -> Path:
    """README.md of ``<run>/iter<t>`` with one `load_dataset` config per stage parquet present."""
    iter_dir = Path(iter_dir)
    names = [n for n in ("questions", "labels") if (iter_dir / f"{n}.parquet").is_file()]
    # absolute paths: datasets caches a local folder's configs under "<folder name>/<config>" and a
    # hash that ignores where relative files are, so runs/A/iter1 and runs/B/iter1 would share a cache
    configs = "".join(f"- config_name: {n}\n  data_files: {json.dumps(str((iter_dir / f'{n}.parquet').resolve()))}\n"
                      + ("  default: true\n" if n == names[-1] else "") for n in names)
    text = f"""---
configs:
{configs}tags: [visplay, synthetic, vqa]
---
# visplay {iter_dir.parent.name} {iter_dir.name}: self-generated questions and silver labels

```python
import datasets
labels = datasets.load_dataset({str(iter_dir)!r}, "labels", split="train")  # or "questions"
labels[0]["image_png"]  # a PIL image
```

- `questions`: per image, the questioner's samples (`raw`), whether each parsed (`valid`, `reason`),
  `qtype`, `question`, the questioner's own answer and, for world scenes, the oracle's `true_answer`.
- `labels`: the questions plus the reasoner's `samples`, their boxed `answers`, the majority `label`,
  its `agreement` (share of samples), `kept` (inside the agreement band, used for reasoner GRPO),
  and `label_correct` against the oracle where known (never used for training).

The image column `image_png` is a `datasets.Image` (PNG bytes). The configs above name the files
by absolute path (rewritten when the run resumes); after moving the run, load a file directly:
`datasets.load_dataset("parquet", data_files="<run>/{iter_dir.name}/labels.parquet")`.
"""
    return atomic_write_text(iter_dir / CARD, text)


def publish_stage(run_root: str | Path, stage: str) -> None:
    """Tidy a finished stage's outputs for users: its chunk parts (``<stage>.parts/``, merged into
    ``<stage>.parquet``) are removed, and the iteration's dataset card lists the parquet files."""
    run = RunDir(run_root)
    merged = run.output(stage)
    if parse_stage(stage)[1] not in CHUNKED_STAGES or not merged.is_file():
        return
    shutil.rmtree(run.parts(stage), ignore_errors=True)
    write_dataset_card(merged.parent)
