"""What a user keeps from a run: checkpoints with a model card, prompt layout and sampling
defaults that plain transformers can use; stage parquet that `datasets` loads with images;
outputs readable by the group (0644 under umask 022); `--model runs/X` naming the final reasoner.

Offline, about a minute (one micro loop, one micro GRPO phase, the shipped tiny model's card
snippet): `pytest -q tests/test_model_files.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from visplay.model_files import CHAT_TEMPLATE, dress_checkpoint, snippet
from visplay.run.publish import final_model
from visplay.config import EMBEDDED_MODELS, load_config, resolve_model
from visplay.roles.prompts import REASONER_INSTRUCTION, questioner_messages, reasoner_messages


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _render(processor, messages) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_chat_template_keeps_trained_prompts_and_lays_out_plain_ones(micro):
    """The card's template renders visplay's own prompts exactly as the build template did (so
    training is unchanged) and turns an ordinary image-then-question turn into the trained layout."""
    from visplay.tiny.build import CHAT_TEMPLATE as BUILT

    _, processor = micro
    old = processor.chat_template
    try:
        trained = {}
        for name, template in (("built", BUILT), ("card", CHAT_TEMPLATE)):
            processor.chat_template = template
            trained[name] = [_render(processor, m) for m in (questioner_messages(), reasoner_messages("How many red circles?"),
                                                            [{"role": "user", "content": "text only"}])]
        assert trained["card"] == trained["built"]
        plain = _render(processor, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red circles?"}]}])
        assert plain == trained["built"][1]
        assert _render(processor, [{"role": "user", "content": [{"type": "image"}]}]) == trained["built"][0]
    finally:
        processor.chat_template = old


def _phase(micro_model_dir, out):
    import itertools

    from visplay.answers import Grader
    from visplay.config import GRPOPhase
    from visplay.data.sources import WorldSource
    from visplay.evolve.rows import questioner_dataset
    from visplay.models import load_model
    from visplay.sampling.hf import TransformersSampler
    from visplay.rewards.questioner import QuestionerReward
    from visplay.evolve.grpo import train_grpo
    from visplay.worlds.scene import WorldConfig

    model, processor = load_model(micro_model_dir)
    items = list(itertools.islice(WorldSource(WorldConfig(), "unlabeled"), 2))
    phase = GRPOPhase(steps=1, prompts_per_step=2, num_generations=2, max_completion_length=6)
    with Grader(workers=0) as g:
        reward = QuestionerReward(TransformersSampler(model, processor), g, m=2, max_new_tokens=4)
        return train_grpo(model, processor, questioner_dataset(items), reward, phase, out)


def test_grpo_phase_output_explains_itself(micro_model_dir, tmp_path, umask_022, capsys):
    """A phase's folder carries its card (stage, start, how trained, a snippet naming the folder),
    greedy generation defaults, the layout template, and 0644 files; the console shows no log dict
    while the full dicts come back for metrics.jsonl."""
    out = tmp_path / "run" / "iter1" / "questioner"
    _, history, _ = _phase(micro_model_dir, out)
    card = (out / "README.md").read_text()
    assert "# visplay iter1/questioner" in card and str(micro_model_dir) in card and "GRPO (TRL GRPOTrainer): 1 steps" in card
    assert f"model_dir = {str(out)!r}" in card and "pipeline_tag: image-text-to-text" in card
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["max_new_tokens"] == 6 and 2 not in gen["suppress_tokens"]  # 2 = <|im_end|>
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert {p.name: _mode(p) for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}
    assert "loss" in history[0] and "clip_ratio/high_max" in history[0]
    printed = capsys.readouterr()
    assert "clip_ratio" not in printed.out + printed.err and "FutureWarning" not in printed.err


def test_card_snippet_runs_on_a_micro_checkpoint(micro_model_dir, tmp_path):
    """The card's snippet, run as written against a dressed micro checkpoint, feeds the model the
    prompt it was trained on and decodes a completion with the checkpoint's defaults."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(micro_model_dir, ckpt)
    dress_checkpoint(ckpt, "micro", {"stage": "test"}, max_new_tokens=5)
    code = (ckpt / "README.md").read_text().split("```python\n")[1].split("```")[0]
    assert code == snippet(ckpt)
    ns: dict = {}
    exec(compile(code, "card-snippet", "exec"), ns)
    assert ns["prompt"].endswith(f"{ns['question'].text} {REASONER_INSTRUCTION}<|vision_start|><|image_pad|><|vision_end|>"
                                 "<|im_end|>\n<|im_start|>assistant\n")
    assert isinstance(ns["answer"], str) and ns["output"].shape[1] - ns["inputs"]["input_ids"].shape[1] <= 5


def test_card_snippet_answers_a_heldout_question_with_the_shipped_model(tmp_path):
    """Plain transformers + the card's snippet on a dressed copy of the shipped tiny model gives
    `<think>...</think>\\boxed{}` answers, right by the world's oracle on some held-out scene."""
    from visplay.roles.parsing import parse_reasoner
    from visplay.worlds.questions import grade

    ckpt = tmp_path / "tiny"
    shutil.copytree(EMBEDDED_MODELS["tiny"], ckpt)
    dress_checkpoint(ckpt, "tiny", {"stage": "test"}, max_new_tokens=48)
    correct = []
    for index in range(8):
        ns: dict = {}
        exec(compile(snippet(ckpt, index), "card-snippet", "exec"), ns)
        parsed = parse_reasoner(ns["answer"])
        assert ns["answer"].startswith("<think>") and parsed.answer is not None, ns["answer"]
        correct.append(grade(ns["question"].text, parsed.answer, ns["question"].answer))
        if correct[-1]:
            break
    assert any(correct), correct


@pytest.fixture(scope="module")
def micro_run(micro_model_dir, tmp_path_factory):
    from test_evolve import SHORT

    from visplay.evolve.loop import run_evolve

    old = os.umask(0o022)
    try:
        run = tmp_path_factory.mktemp("cards") / "run"
        cfg = load_config("tiny", SHORT + [f"model={micro_model_dir}", "evolve.max_new_tokens=8",
                                           "evolve.questioner.max_completion_length=8", "eval.max_new_tokens=8",
                                           "evolve.chunk_size=4"])
        run_evolve(cfg, run, say=print)
    finally:
        os.umask(old)
    return run


def test_run_stage_parquet_loads_with_datasets(micro_run, tmp_path):
    """Each iteration folder is a loadable dataset: its card's configs name questions and labels,
    the image column decodes to PIL, and the merged chunk parts are gone (no duplicate rows)."""
    import datasets
    from PIL import Image

    it = micro_run / "iter1"
    assert not (it / "questions.parts").exists() and not (it / "labels.parts").exists()
    cache = str(tmp_path / "hf-datasets")
    labels = datasets.load_dataset(str(it), "labels", split="train", cache_dir=cache)
    questions = datasets.load_dataset(str(it), "questions", split="train", cache_dir=cache)
    assert len(labels) == len(questions) == 12
    assert isinstance(labels.features["image_png"], datasets.Image) and isinstance(labels[0]["image_png"], Image.Image)
    single = datasets.load_dataset("parquet", data_files=str(it / "questions.parquet"), split="train", cache_dir=cache)
    assert isinstance(single.features["image_png"], datasets.Image) and single[0]["image_id"] == questions[0]["image_id"]


def test_run_outputs_are_group_readable_and_the_run_names_its_final_model(micro_run):
    """Every file the loop wrote is 0644 under umask 022 (not mkstemp's 0600), and `--model RUN`
    resolves to the reasoner the manifest records last."""
    files = [p for p in micro_run.rglob("*") if p.is_file() and p.name != "lock"]
    assert files and {str(p.relative_to(micro_run)): _mode(p) for p in files} == \
        {str(p.relative_to(micro_run)): 0o644 for p in files}
    stages = json.loads((micro_run / "manifest.json").read_text())["stages"]
    # the random micro model keeps no question, so its reasoner is the base model carried over
    assert resolve_model(str(micro_run)) == final_model(micro_run) == Path(stages["iter1/reasoner"]["model"])


def test_final_model_is_the_last_finished_reasoner(tmp_path):
    """The manifest's highest finished iter<t>/reasoner, found under the run even after it moved."""
    run = tmp_path / "moved"
    for t in (1, 2):
        (run / f"iter{t}" / "reasoner").mkdir(parents=True)
    stages = {"iter1/reasoner": {"state": "done", "model": "runs/old/iter1/reasoner"},
              "iter2/reasoner": {"state": "done", "model": "runs/old/iter2/reasoner"},
              "iter3/reasoner": {"state": "running"}}
    (run / "manifest.json").write_text(json.dumps({"stages": stages}))
    assert final_model(run) == run / "iter2" / "reasoner" == resolve_model(str(run))
    (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    assert final_model(run) is None and final_model(tmp_path / "nothing") is None
