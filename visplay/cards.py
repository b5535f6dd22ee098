"""Saved outputs that explain themselves: model cards, prompt layout, sampling defaults, dataset cards.

A role checkpoint (a GRPO phase's output, `visplay pretrain`'s model) gets, next to its weights:

- ``chat_template.jinja``: `CHAT_TEMPLATE`, which lays any user turn with an image out the way the
  model was trained (`visplay/roles/prompts.py`): the text first, then the image, and the
  reasoner's instruction suffix added when it is missing (an image with no text gets the
  questioner's instruction). Prompts already in the trained layout render exactly as before, so
  training and sampling inside visplay see the same tokens.
- ``generation_config.json``: greedy decoding (the held-out "greedy" number), ``max_new_tokens``
  and the special tokens visplay's samplers suppress, so a plain ``model.generate(**inputs)`` works.
- ``README.md``: base model, run, iteration, stage, how it was trained, and a copy-paste
  transformers snippet (`snippet`) that answers a held-out world question.

An iteration folder of a run gets a dataset card (`write_dataset_card`) whose ``configs`` make
``datasets.load_dataset("runs/X/iter1", "labels")`` load that iteration's questions or labels
(with the image column decoded as an ``Image``). `final_model` finds a run's last reasoner.
Test: `pytest tests/test_cards.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visplay.evolve.plan_of_stages import CHUNKED_STAGES, parse_stage
from visplay.evolve.rundir import RunDir
from visplay.io import atomic_write_text
from visplay.roles.prompts import QUESTIONER_INSTRUCTION, REASONER_INSTRUCTION

CARD = "README.md"

_Q, _R = json.dumps(QUESTIONER_INSTRUCTION), json.dumps(REASONER_INSTRUCTION)  # Jinja string literals
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% set ns = namespace(text='', images='') %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}"
    "{% set ns.images = ns.images + '<|vision_start|><|image_pad|><|vision_end|>' %}"
    "{% elif c['type'] == 'video' %}{% set ns.images = ns.images + '<|vision_start|><|video_pad|><|vision_end|>' %}"
    "{% elif c['type'] == 'text' %}{% set ns.text = ns.text + c['text'] %}{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' and ns.images %}"
    # the trained layout: text, then image; add the instruction the roles were trained with
    f"{{% if ns.text | trim == '' %}}{{{{ {_Q} }}}}"
    f"{{% elif ns.text.endswith({_Q}) or ns.text.endswith({_R}) %}}{{{{ ns.text }}}}"
    f"{{% else %}}{{{{ (ns.text | trim) + ' ' + {_R} }}}}{{% endif %}}{{{{ ns.images }}}}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def snippet(model_dir: str | Path, index: int = 0) -> str:
    """Python that loads ``model_dir`` with plain transformers and answers held-out world question ``index``."""
    return f'''import random

from transformers import AutoModelForImageTextToText, AutoProcessor

from visplay.worlds.questions import MARKED_FAMILIES, make_question  # to draw a held-out question
from visplay.worlds.scene import make_scene

model_dir = {str(model_dir)!r}
index = {index}
model = AutoModelForImageTextToText.from_pretrained(model_dir)
processor = AutoProcessor.from_pretrained(model_dir)
scene = make_scene("heldout", index)
question = make_question(scene, random.Random(index), MARKED_FAMILIES)  # the families models/tiny learned
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": question.text}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)  # lays it out as trained
inputs = processor(text=[prompt], images=[scene.render()], return_tensors="pt")
output = model.generate(**inputs)  # greedy; max_new_tokens and suppressed tokens from generation_config.json
answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
print(question.text)
print(answer, "| oracle:", question.answer)
'''


def suppressed_ids(tokenizer) -> list[int]:
    """Special tokens a completion never contains (image pads, chat markers): all but ``<|im_end|>``."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    extra = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return sorted((set(tokenizer.all_special_ids) | extra) - {eos})


def write_generation_defaults(model_dir: Path, tokenizer, max_new_tokens: int) -> None:
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(model_dir)
    gen.update(do_sample=False, max_new_tokens=max_new_tokens, suppress_tokens=suppressed_ids(tokenizer),
               eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    atomic_write_text(model_dir / "generation_config.json", gen.to_json_string(use_diff=True))


def _rows(info: dict[str, Any]) -> str:
    return "\n".join(f"| {k} | {v} |" for k, v in info.items() if v not in (None, ""))


def model_card(title: str, info: dict[str, Any], model_dir: str | Path, max_new_tokens: int,
               sampling: str | None = None) -> str:
    """The README.md of a checkpoint: what it is, how it was made, how to run it."""
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [visplay, qwen2_5_vl, grpo, self-evolving]
---
# {title}

A Qwen2.5-VL checkpoint written by [visplay](https://arxiv.org/abs/2511.15661) (self-evolving
vision-language models from unlabeled images).

| | |
| --- | --- |
{_rows(info)}

## Prompt layout

Trained on the question text *before* the image, followed by the instruction
`{REASONER_INSTRUCTION}` (reasoner) or `{QUESTIONER_INSTRUCTION}` (questioner, image only).
Answers look like `<think>...</think>\\boxed{{answer}}`. The chat template in this folder
(`chat_template.jinja`) builds that layout from an ordinary user turn (image and question in any
order; an image alone asks for a question), so plain `processor.apply_chat_template` works.

## Sampling defaults (`generation_config.json`)

Greedy (the run's "greedy" accuracy), `max_new_tokens={max_new_tokens}`, special tokens
suppressed. {sampling or "For maj@k, sample with do_sample=True, temperature=1.0, top_k=40."}

## Use it

```python
{snippet(model_dir).rstrip()}
```
"""


def dress_checkpoint(model_dir: str | Path, title: str, info: dict[str, Any], max_new_tokens: int = 64,
                     tokenizer=None, card_dir: str | Path | None = None, sampling: str | None = None) -> Path:
    """Write the chat template, generation defaults and model card into a saved checkpoint.

    ``card_dir``: the path the snippet names (the final location, when ``model_dir`` is a temp
    folder about to be renamed)."""
    model_dir = Path(model_dir)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    atomic_write_text(model_dir / "chat_template.jinja", CHAT_TEMPLATE)
    write_generation_defaults(model_dir, tokenizer, max_new_tokens)
    atomic_write_text(model_dir / CARD, model_card(title, info, card_dir or model_dir, max_new_tokens, sampling))
    return model_dir


def _manifest(run_root: Path) -> dict | None:
    try:
        return json.loads((run_root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def phase_card_info(out_dir: Path, role: str, phase, start: str | Path | None) -> tuple[str, dict]:
    """Title and table rows for a GRPO phase saved to ``out_dir`` = ``<run>/iter<t>/<role>``."""
    out_dir = Path(out_dir)
    run_root, stage = out_dir.parent.parent, f"{out_dir.parent.name}/{out_dir.name}"
    manifest = _manifest(run_root) or {}
    config = manifest.get("config") or {}
    reward = ("0.9 x agreement with the majority-vote silver label + 0.1 x format" if role == "reasoner" else
              "uncertainty of the frozen reasoner's answers minus a diversity penalty (VisPlay)")
    info = {
        "base model": config.get("model"),
        "run": str(run_root),
        "iteration": out_dir.parent.name.removeprefix("iter"),
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
    done = [(int(s[4:-len("/reasoner")]), info) for s, info in manifest.get("stages", {}).items()
            if s.startswith("iter") and s.endswith("/reasoner") and s[4:-len("/reasoner")].isdigit()
            and info.get("state") == "done"]
    if not done:
        return None
    t, info = max(done, key=lambda x: x[0])
    model = Path(info.get("model") or run_root / f"iter{t}" / "reasoner")
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
    import shutil

    run = RunDir(run_root)
    merged = run.output(stage)
    if parse_stage(stage)[1] not in CHUNKED_STAGES or not merged.is_file():
        return
    shutil.rmtree(run.parts(stage), ignore_errors=True)
    write_dataset_card(merged.parent)
