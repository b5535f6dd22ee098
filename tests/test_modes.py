"""Every rule between settings (`visplay.modes.RULES`) has a row here that breaks it, and the config
loader refuses that row with the rule's own message; knobs the chosen modes never read are refused
when a --set sets them. In-memory, no model loaded: `pytest -q tests/test_modes.py`.
"""

from __future__ import annotations

import re

import pytest

from visplay import modes
from visplay.config import ConfigError, load_config

# the embedded loop as VisPlay's recipe (one model, answer vote, reasoner GRPO): each row switches one mode
GRPO = ["evolve.committee=[]", "evolve.agreement=answer", "evolve.reasoner_objective=grpo", "evolve.coevolve=false"]

#: rule -> (overrides on the tiny preset that break it, a piece of its message)
TABLE = {
    "seed_scenes": (["evolve.seed=1000"], "evolve.seed must be in [0, 1000)"),
    "source_objects": (["evolve.source_objects=[6,40]"], "evolve.source_objects"),
    "advance_needs_ladder": (["evolve.advance_kept_share=0.3"], "with evolve.ladder=true"),
    "coevolve_needs_sft_committee": ([*GRPO, "evolve.coevolve=true", "evolve.committee=[walk-random]"],
                                     "evolve.coevolve trains"),
    "coevolve_local_members": (["evolve.committee=[url=http://127.0.0.1:9/v1]"],
                               "cannot train a url= committee member"),
    "sft_no_lora": (["evolve.reasoner.lora_rank=8"], "evolve.reasoner.lora_rank=8 is for the reasoner's GRPO phase; "
                    "evolve.reasoner_objective=sft reads evolve.sft_lora_rank: set evolve.sft_lora_rank=8 instead"),
    "survey_pool": (["evolve.survey_images=100"], "at least evolve.images_per_iteration (512)"),
    "survey_or_ladder": (["evolve.ladder=true"], "choose one"),
    "replay_needs_ladder": (["evolve.survey_images=0", "evolve.replay_images=8"], "needs evolve.ladder=true"),
    "questioner_labels_need_grpo": (["evolve.labels=questioner"], "evolve.labels=questioner"),
    "trace_needs_world": (["evolve.source=folder:/data/images"], "evolve.agreement=trace"),
    "committee_arch_per_member": (["committee_arch=[null, null]"], "committee_arch gives 2 shapes for 1 evolve.committee"),
}


def test_the_table_covers_every_rule() -> None:
    assert set(TABLE) == set(modes.RULES)


@pytest.mark.parametrize("rule", sorted(TABLE))
def test_each_rule_is_one_clear_error(rule, monkeypatch) -> None:
    overrides, message = TABLE[rule]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", overrides)
    monkeypatch.delitem(modes.RULES, rule)  # without this rule, its message is gone: the row breaks this rule
    try:
        load_config("tiny", overrides)
    except ConfigError as e:
        assert message not in str(e)


PRESETS = ["tiny", "tiny-long", "qwen2_5_vl_3b", "qwen2_5_vl_7b", "mimo_vl_7b", "qwen2_5_vl_7b_committee"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_keeps_every_rule(preset) -> None:
    assert modes.broken(load_config(preset)) == {}


def test_all_broken_rules_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["evolve.labels=questioner", "evolve.source=folder:/x"])
    assert "evolve.labels=questioner" in str(err.value) and "evolve.agreement=trace" in str(err.value)


@pytest.mark.parametrize(("overrides", "unread"), [
    (["evolve.reasoner.steps=3"], "evolve.reasoner.steps"),  # the default objective is SFT
    (["evolve.reasoner.learning_rate=1e-6"], "evolve.reasoner.lr"),  # TRL's spelling names the same knob
    ([*GRPO, "evolve.sft_epochs=5"], "evolve.sft_epochs"),
    ([*GRPO, "evolve.sft_lora_rank=8"], "evolve.sft_lora_rank"),  # the SFT objective's LoRA
    ([*GRPO, "evolve.sft_lora_alpha=32"], "evolve.sft_lora_alpha"),
    ([*GRPO, "evolve.sft_gradient_checkpointing=true"], "evolve.sft_gradient_checkpointing"),
    (["evolve.train_questioner=false", "evolve.questioner.steps=9"], "evolve.questioner.steps"),
])
def test_a_set_knob_the_chosen_mode_never_reads_is_refused(overrides, unread) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"--set {unread} (a knob of")):
        load_config("tiny", overrides)


def test_a_presets_other_objective_is_listed_as_unread_not_refused() -> None:
    cfg = load_config("tiny")  # the preset keeps the reasoner's GRPO settings for the grpo ablation
    assert cfg.evolve.reasoner_objective == "sft"
    assert set(modes.unread(cfg)) == {"evolve.reasoner.steps", "evolve.reasoner.num_generations"}
    grpo = load_config("tiny", GRPO)  # and its SFT settings are unread under GRPO
    assert set(modes.unread(grpo)) == {"evolve.sft_epochs", "evolve.sft_batch_size", "evolve.sft_schedule",
                                       "evolve.sft_warmup"}
    assert "evolve.reasoner.steps" not in modes.unread(load_config("tiny", [*GRPO, "evolve.reasoner.steps=3"]))
    # a preset's SFT LoRA is unread under GRPO (the --set is refused above; a preset's value is listed)
    lora = load_config("qwen2_5_vl_7b_committee", ["evolve.reasoner_objective=grpo", "evolve.coevolve=false"])
    assert {"evolve.sft_lora_rank", "evolve.sft_gradient_checkpointing"} <= set(modes.unread(lora))
    assert not any(k.startswith("evolve.sft_") for k in modes.unread(load_config("qwen2_5_vl_7b_committee")))


def test_the_sft_objective_runs_under_the_launcher() -> None:
    """SFT under ``hardware.launcher`` is a mode now (each member launched on every GPU), no longer a refusal."""
    cfg = load_config("tiny", ["hardware.launcher=accelerate launch", "evolve.sft_lora_rank=8"])
    assert cfg.evolve.reasoner_objective == "sft" and modes.broken(cfg) == {}


@pytest.mark.parametrize("preset", PRESETS)
def test_the_dry_run_names_the_objective_and_the_labelling_rule(preset, capsys) -> None:
    """The plan's words come from the resolved config: a preset's objective, who labels and by which
    rule, and the devices here (CPU when there is no GPU), never a fixed recipe."""
    from visplay.cli import main
    from visplay.evolve.plan import gpus_here

    ev = load_config(preset).evolve
    assert main(["evolve", "--preset", preset, "--dry-run"]) == 0
    lines = {line[:10].strip(): line[10:].strip() for line in capsys.readouterr().out.splitlines() if line[:1].isalpha()}
    objective = {"sft": "SFT of the reasoner", "grpo": "GRPO with the silver labels"}[ev.reasoner_objective]
    rule = {"trace": "trace agreement", "answer": "answer agreement" if ev.committee else "majority vote"}[ev.agreement]
    assert lines["objective"].startswith(objective) and rule in lines["labels"]
    assert ("committee of" in lines["labels"]) == bool(ev.committee)
    assert f"reasoner {ev.reasoner_objective.upper()}" in lines["loop"]
    assert lines["devices"].startswith("CPU") == (gpus_here() == 0)
