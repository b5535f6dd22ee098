"""The rules between settings, in one place: every cross-field rule of the config tree, checked in
one pass when a config is built (`check`), and the knobs the chosen modes do not read (`unread`).

About sixteen switches choose what a run does -- the reasoner's objective (``grpo`` | ``sft``),
the committee and its agreement (``answer`` | ``trace`` | ``chain``), co-evolution, the labels' column, the
curriculum (survey | ladder, replay, holding a level), the questioner (trained | frozen), the
launcher -- and some combinations mean nothing. Each rule below names the settings it ties and
says what to do; `check` reports every broken rule at once. A single field's own range stays in
its section's ``__post_init__``; whether a named thing exists and loads is `visplay.evolve.preflight`'s.

A knob the chosen objective does not read (``evolve.reasoner.*`` under ``sft``, ``evolve.sft_*``
under ``grpo``, ``evolve.questioner.*`` with a frozen questioner) is an error when a ``--set``
override sets it (`check_overrides`, from `visplay.config.load_config`); a preset may carry both
objectives' settings, so the other one is an ablation away, and the dry-run plan lists what the
run will not read. Test: `pytest tests/test_modes.py` (one row per rule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from visplay.evolve.sections import EvolveConfig
from visplay.evolve.seeds import REPLAY_START, WORLD_SEED_SCENES, first_scene
from visplay.settings import ConfigError

#: The SFT objective's keys (`visplay.evolve.sections.SFTPhase`), flat in the evolve section.
SFT_KEYS = ("sft_epochs", "sft_batch_size", "sft_lr", "sft_schedule", "sft_warmup", "sft_per_device_batch",
            "sft_gradient_checkpointing", "sft_lora_rank", "sft_lora_alpha", "sft_lora_dropout",
            "sft_lora_target_modules")


def _world(cfg) -> bool:
    return cfg.evolve.source.startswith("world")


def _seed_scenes(cfg) -> str | None:
    if _world(cfg) and not 0 <= first_scene(cfg.evolve.seed) < REPLAY_START:
        return (f"evolve.seed must be in [0, {REPLAY_START // WORLD_SEED_SCENES}) for a world source "
                f"(seed s draws scenes from s x {WORLD_SEED_SCENES:,}), got {cfg.evolve.seed}")
    return None


def _source_objects(cfg) -> str | None:
    try:
        cfg.source_world  # noqa: B018 -- evolve.source_objects against the world's grid
    except ValueError as e:
        return f"evolve.source_objects: {e}"
    return None


def _advance_needs_ladder(cfg) -> str | None:
    ev = cfg.evolve
    if ev.advance_kept_share is not None and not ev.ladder:
        return (f"evolve.advance_kept_share must be in (0, 1] with evolve.ladder=true, or null; "
                f"got {ev.advance_kept_share} (ladder {ev.ladder})")
    return None


def _coevolve_needs_sft_committee(cfg) -> str | None:
    ev = cfg.evolve
    if ev.coevolve and (ev.reasoner_objective != "sft" or not ev.committee):
        return ("evolve.coevolve trains the committee's members by SFT on their own chains: it needs "
                "evolve.reasoner_objective=sft and at least one evolve.committee member")
    return None


def _coevolve_local_members(cfg) -> str | None:
    if cfg.evolve.coevolve and any(e.startswith("url=") for e in cfg.evolve.committee):
        return "evolve.coevolve cannot train a url= committee member (a server); use local model dirs"
    return None


def _sft_no_lora(cfg) -> str | None:
    ev = cfg.evolve
    if ev.reasoner_objective == "sft" and ev.reasoner.lora:
        return (f"evolve.reasoner.lora_rank={ev.reasoner.lora_rank} is for the reasoner's GRPO phase; "
                f"evolve.reasoner_objective=sft reads evolve.sft_lora_rank: set evolve.sft_lora_rank="
                f"{ev.reasoner.lora_rank} instead (and evolve.reasoner.lora_rank=0), or reasoner_objective=grpo")
    return None


def _survey_pool(cfg) -> str | None:
    ev = cfg.evolve
    if ev.survey_images and ev.survey_images < ev.images_per_iteration:
        return (f"evolve.survey_images must be 0 (off) or at least evolve.images_per_iteration "
                f"({ev.images_per_iteration}): the pool each iteration takes its images from; got {ev.survey_images}")
    return None


def _survey_or_ladder(cfg) -> str | None:
    if cfg.evolve.survey_images and cfg.evolve.ladder:
        return ("evolve.survey_images orders an unsorted pool by the reasoner's own answers; "
                "evolve.ladder draws each iteration's level from the world's generator: choose one")
    return None


def _replay_needs_ladder(cfg) -> str | None:
    if cfg.evolve.replay_images and not cfg.evolve.ladder:
        return ("evolve.replay_images draws world scenes below the ladder's level: it needs "
                "evolve.ladder=true (or replay_images=0)")
    return None


def _questioner_labels_need_grpo(cfg) -> str | None:
    ev = cfg.evolve
    if ev.labels == "questioner" and ev.reasoner_objective != "grpo":
        return ("evolve.labels=questioner makes the questioner's answers the reasoner's GRPO reward column; "
                "evolve.reasoner_objective=sft trains on the committee's agreeing chains and never reads it: "
                "set evolve.reasoner_objective=grpo (or labels=majority)")
    return None


def _trace_needs_world(cfg) -> str | None:
    ev = cfg.evolve
    if ev.agreement == "trace" and not _world(cfg):
        return (f"evolve.agreement=trace votes on the world task's trace key, which only world images have; "
                f"evolve.source={ev.source!r} is not the world: set evolve.agreement=chain (the same vote on a key any chain has) or answer")
    return None


def _committee_arch_per_member(cfg) -> str | None:
    n, shapes = len(cfg.evolve.committee), len(cfg.committee_arch)
    if shapes > n:
        return (f"committee_arch gives {shapes} shapes for {n} evolve.committee member(s): entry i is member i's "
                "shape (null: its config.json, else the base model's); drop the extra entries")
    return None


#: name -> the rule: None when the config keeps it, else what is wrong and what to do.
RULES: dict[str, Callable[[Any], str | None]] = {
    "seed_scenes": _seed_scenes,
    "source_objects": _source_objects,
    "advance_needs_ladder": _advance_needs_ladder,
    "coevolve_needs_sft_committee": _coevolve_needs_sft_committee,
    "coevolve_local_members": _coevolve_local_members,
    "sft_no_lora": _sft_no_lora,
    "survey_pool": _survey_pool,
    "survey_or_ladder": _survey_or_ladder,
    "replay_needs_ladder": _replay_needs_ladder,
    "questioner_labels_need_grpo": _questioner_labels_need_grpo,
    "trace_needs_world": _trace_needs_world,
    "committee_arch_per_member": _committee_arch_per_member,
}


def broken(cfg) -> dict[str, str]:
    """{rule name: message} of every rule ``cfg`` (a `visplay.config.Config`) breaks."""
    return {name: msg for name, rule in RULES.items() if (msg := rule(cfg))}


def check(cfg) -> None:
    """One `ConfigError` listing every broken rule (called by `visplay.config.Config`)."""
    problems = broken(cfg)
    if problems:
        raise ConfigError("; ".join(problems.values()))


def _changed(section, default, prefix: str) -> list[str]:
    return [f"{prefix}{f.name}" for f in dataclasses.fields(section)
            if getattr(section, f.name) != getattr(default, f.name)]


def unread(cfg) -> dict[str, str]:
    """{setting: why} for each setting away from its default that the chosen modes never read."""
    ev, default = cfg.evolve, EvolveConfig()
    out: dict[str, str] = {}
    if ev.reasoner_objective == "sft":
        why = "a knob of the reasoner's GRPO phase; evolve.reasoner_objective=sft does not read it"
        out.update(dict.fromkeys(_changed(ev.reasoner, default.reasoner, "evolve.reasoner."), why))
    else:
        why = f"a knob of the SFT objective; evolve.reasoner_objective={ev.reasoner_objective} does not read it"
        out.update({f"evolve.{k}": why for k in SFT_KEYS if getattr(ev, k) != getattr(default, k)})
    if not ev.committee and ev.min_kept != default.min_kept:
        out["evolve.min_kept"] = "ends a committee's run; a lone reasoner carries itself over instead (no evolve.committee)"
    if not ev.train_questioner:
        why = "a knob of the questioner's GRPO phase; evolve.train_questioner=false does not train it"
        out.update(dict.fromkeys(_changed(ev.questioner, default.questioner, "evolve.questioner."), why))
    return out


def check_overrides(cfg, keys: Iterable[str]) -> None:
    """A `ConfigError` when a ``--set`` override (dotted ``keys``) sets a knob `unread` names."""
    ignored = unread(cfg)
    hits = [f"{name} ({why})" for key in keys for name, why in ignored.items()
            if name == key or name.startswith(key + ".")]
    if hits:
        raise ConfigError("--set " + "; ".join(dict.fromkeys(hits)) + ": drop the override or choose the mode "
                          "that reads it")


# -- what the chosen modes do, in words (the dry-run plan, --help, the report) --------------------


def labelling_rule(ev) -> str:
    """How the labels stage turns samples into a silver label and its agreement c, for ``ev`` (the
    evolve section)."""
    if ev.agreement == "trace":
        rule = ("trace agreement: each member's modal trace key (the objects its walk lists and the answer, which "
                "must follow from the listing) must be the same; the label is that answer")
    elif ev.agreement == "chain":
        rule = ("chain agreement: each member's modal chain key (the clauses its chain states, in any order, numbers "
                "masked, and the answer; no task rule) must be the same; the label is that answer")
    elif ev.committee:
        rule = "answer agreement: each member's majority answer must be the same; that answer is the label"
    else:
        rule = "majority vote: the majority answer is the label"
    share = "c = the weakest member's share of its samples on it" if ev.committee else "c = its share of the samples"
    return f"{rule}; {share}; kept when c is in {ev.band_text()}"


def labellers(ev) -> str:
    """Who labels: the reasoner alone, or the committee."""
    if not ev.committee:
        return "the reasoner R_{t-1} alone"
    return (f"a committee of {1 + len(ev.committee)}: the reasoner R_{{t-1}} and {', '.join(ev.committee)}"
            + (", co-evolving (each local member trains on its own agreeing chains)" if ev.coevolve else ", frozen"))


def objective(ev) -> str:
    """How the reasoner R_t is trained on the kept labels."""
    if ev.reasoner_objective == "sft":
        who = "the reasoner and every local committee member" if ev.coevolve else "the reasoner"
        return f"SFT of {who} on its own agreeing chains: {ev.sft.describe()}"
    column = "the questioner's own answers (ablation)" if ev.labels == "questioner" else "the silver labels"
    return f"GRPO with {column} as the accuracy reward ({ev.reasoner.steps} steps, lr {ev.reasoner.lr:g})"


def curriculum(cfg) -> str:
    """Which unseen images each iteration takes."""
    ev = cfg.evolve
    if ev.survey_images:
        return (f"a label-free survey orders a pool of {ev.survey_images:,} images by the base reasoner's answer "
                "length; each iteration takes the easiest unseen")
    if ev.ladder:
        hold = (f", climbing only when {ev.advance_kept_share:g} of a level's questions were kept"
                if ev.advance_kept_share is not None else "")
        return f"a ladder: iteration t draws level {cfg.source_world_at(1).min_objects} + t - 1 of the world{hold}"
    return "the source's own order, unseen images only"


def describe(cfg) -> dict[str, str]:
    """The run's modes in words, from the resolved config: what `visplay evolve --dry-run` prints."""
    ev = cfg.evolve
    return {
        "objective": objective(ev),
        "labels": f"{ev.label_samples} samples each from {labellers(ev)}; {labelling_rule(ev)}"
                  + ("; labels of every iteration so far" if ev.accumulate_labels else ""),
        "questioner": (f"GRPO each iteration on {ev.questioner_images} images"
                       + (f"; drift guard: the previous one is kept when under {ev.min_valid_share:g} of the "
                          "trained one's questions parse (and fewer than the previous one's)"
                          if ev.min_valid_share is not None else "")) if ev.train_questioner
                      else "frozen (evolve.train_questioner=false)",
        "curriculum": curriculum(cfg),
        "replay": (f"{ev.replay_images} self-labelled images an iteration from the levels below the ladder's"
                   if ev.replay_images else "none"),
        "stops": ((f"when an iteration keeps fewer than {ev.min_kept} labels, the run ends before training it (nothing "
                   "further agrees)" if ev.min_kept > 1 else
                   "when an iteration keeps no question, the run ends (a committee agreed on nothing at its level)")
                  if ev.ends_when_nothing_kept else "when an iteration keeps no question, the reasoner is carried over")
                 + (f"; when mean agreement reaches {ev.stop_agreement:g}" if ev.stop_agreement is not None else ""),
    }


def pipeline(cfg) -> str:
    """The loop in one line, from the resolved config (the help texts)."""
    ev = cfg.evolve
    questioner = "questioner GRPO" if ev.train_questioner else "frozen questioner"
    labels = (f"committee labels ({ev.agreement} agreement)" if ev.committee else "majority-vote silver labels")
    reasoner = f"reasoner {ev.reasoner_objective.upper()}" + (" (co-evolving committee)" if ev.coevolve else "")
    return f"{questioner} -> questions -> {labels} -> {reasoner} -> eval"
