"""The loop's own metrics in the run's tracker: one TensorBoard run (``<run>/tb/loop``) per evolve.

GRPO phases log their per-step scalars through TRL's ``report_to`` under ``<run>/tb/iter<t>-<role>``;
what the loop measures between phases -- held-out greedy overall / labelled / unlabelled and per
level, maj@k, kept-label accuracy and counts -- goes here with the iteration as the global step, so
one TensorBoard view shows the run's curve. Test: `pytest tests/test_ladder.py -k tracker`.
"""

from __future__ import annotations

from pathlib import Path

from visplay.run.stages import stage_name


def loop_scalars(t: int, stages: dict) -> dict[str, float]:
    """Iteration ``t``'s loop metrics from the manifest's stage infos (missing ones are left out)."""
    ev = stages.get(stage_name(t, "eval"), {})
    out = {f"eval/{k}": ev[k] for k in ("greedy", "greedy_labelled", "greedy_unlabelled", "maj", "pass")
           if isinstance(ev.get(k), (int, float))}
    out.update({f"eval/greedy_level{lv}": v["greedy"] for lv, v in ev.get("by_level", {}).items()})
    labels = stages.get(stage_name(t, "labels"), {})
    for key in ("label_accuracy_kept", "n_kept", "kept_share", "mean_agreement"):
        if isinstance(labels.get(key), (int, float)):
            out[f"labels/{key}"] = labels[key]
    return out


def log_loop_metrics(run_root: str | Path, report_to, t: int, stages: dict) -> None:
    """Write iteration ``t``'s loop metrics to the trackers in ``report_to`` (TensorBoard; wandb when
    it is installed and chosen, into the active or a new run named after the run directory)."""
    scalars = loop_scalars(t, stages)
    if not scalars:
        return
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(Path(run_root) / "tb" / "loop")) as w:
            for k, v in scalars.items():
                w.add_scalar(k, v, global_step=t)
    if "wandb" in report_to:
        import wandb

        run = wandb.run or wandb.init(name=Path(run_root).name, reinit=False)
        run.log({f"loop/{k}": v for k, v in scalars.items()} | {"loop/iteration": t})
