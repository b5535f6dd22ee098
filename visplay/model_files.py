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

The run's own cards (a GRPO phase's rows, an iteration's dataset card, a run's final model) are
`visplay.run.publish`. Test: `pytest tests/test_model_files.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visplay.io import atomic_write_text
from visplay.models import END_OF_TURN, suppressed_ids
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


def write_generation_defaults(model_dir: Path, tokenizer, max_new_tokens: int) -> None:
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(model_dir)
    gen.update(do_sample=False, max_new_tokens=max_new_tokens, suppress_tokens=suppressed_ids(tokenizer),
               eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN), pad_token_id=tokenizer.pad_token_id)
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
