"""The loop's config sections: `EvolveConfig` (``evolve``: the loop and its sampling), `GRPOPhase`
(``evolve.questioner`` / ``evolve.reasoner``: one GRPO phase, read by `visplay.evolve.grpo`),
`SFTPhase` (``evolve.sft_*``: the reasoner's SFT objective, read by `visplay.evolve.sft`) and
`HardwareConfig` (``hardware``: where the heavy parts run, what the plan assumes). Each section
checks its own fields; the rules *between* settings are `visplay.modes`'.
Test: `pytest tests/test_config.py tests/test_scale.py`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from visplay.answers.committee import AGREEMENT_MODES
from visplay.data.images import check_pixel_range
from visplay.sampling.base import Knobs
from visplay.settings import ConfigError, Sampling, base_url, require


VLLM_MODES = ("colocate", "server")
#: The language model's linear layers in every Qwen2.5-VL decoder layer (attention, then SwiGLU MLP):
#: LoRA's default targets, as in the Qwen2.5-VL LoRA recipes (all linear layers of the LM).
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_LORA_RANK = 1024  # above this an adapter is as big as the layers of a 3B model: train them fully
MAX_LORA_ALPHA = 65536.0
#: Each role's rewards and weights when its phase names none: the questioner's min(c, 1-c) minus the
#: diversity penalty; the reasoner's 0.9 accuracy + 0.1 format (the reference's weights).
ROLE_REWARDS = {"questioner": (("questioner",), (1.0,)), "reasoner": (("accuracy", "format"), (0.9, 0.1))}


class LoraKnobs:
    """What a phase's LoRA settings (``lora_rank``, ``lora_alpha``) mean, one definition for a GRPO
    phase and the SFT objective (`visplay.evolve.lora` reads them)."""

    @property
    def lora(self) -> bool:
        """True when the phase trains LoRA adapters instead of every parameter."""
        return self.lora_rank > 0

    @property
    def lora_scale_alpha(self) -> float:
        """``lora_alpha``, defaulting to 2 x rank (the adapter's update is scaled by alpha / rank)."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


@dataclass
class GRPOPhase(LoraKnobs):
    """One GRPO phase (questioner or reasoner), in the reference's (EasyR1) units.

    A *step* is one rollout batch: ``prompts_per_rollout`` prompts x ``num_generations`` samples,
    consumed by ``prompts_per_rollout / prompts_per_step`` optimizer updates of
    ``prompts_per_step`` prompts each (EasyR1 ``rollout_batch_size`` 512 / ``global_batch_size``
    128 = 4 updates per step). ``per_device_batch`` completions go through one forward/backward on
    one device; the rest is gradient accumulation (`visplay.evolve.grpo.grpo_args` does the arithmetic).
    The KL term is TRL's k3 estimator, the same as EasyR1's ``low_var_kl``.
    """

    steps: int = 10
    prompts_per_step: int = 8  # prompts per optimizer update, all devices together (EasyR1 global_batch_size)
    num_generations: int = 8  # samples per prompt (EasyR1 rollout.n)
    prompts_per_rollout: int | None = None  # prompts per rollout batch (EasyR1 rollout_batch_size); None = prompts_per_step
    per_device_batch: int | None = None  # completions per forward/backward per device; None = a whole update at once
    lr: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.04  # KL to the phase's starting model; > 0 guards against reward hacking
    temperature: float = 1.0
    top_k: int = 40  # 0 = off
    top_p: float = 1.0
    max_prompt_length: int = 512  # tokens (image + text); only sizes vLLM's context and the dry-run plan
    max_completion_length: int = 64
    save_steps: int = 5  # in steps (rollout batches)
    seed: int = 0
    gradient_checkpointing: bool = False  # on for 3B/7B presets
    freeze_vision: bool = True  # train the LM and the merger, as in pretraining (the reference trains all)
    # TRL reward functions by name (visplay/rewards/registry.py) or import path pkg.module:fn, and
    # TRL's reward_weights (one per function); None = the role's (ROLE_REWARDS)
    rewards: tuple[str, ...] | None = None
    reward_weights: tuple[float, ...] | None = None
    max_kl: float = 10.0  # health guard: stop the phase when the logged KL exceeds this
    min_entropy: float = 0.02  # health guard: stop the phase when sampling entropy collapses
    # rollouts through vLLM inside TRL (the `[vllm]` extra, docs/scaling.md §9); off = transformers generate
    use_vllm: bool = False
    vllm_mode: str = "colocate"  # colocate: in the training processes; server: a `trl vllm-serve` process
    vllm_server_url: str | None = None  # server mode, e.g. http://10.0.0.2:8000
    vllm_gpu_memory_utilization: float = 0.3  # colocate mode
    vllm_tensor_parallel_size: int = 1  # colocate mode
    # LoRA (TRL's peft_config; visplay/evolve/lora.py): adapters on the language model's `lora_target_modules`
    # and the merger (+ the vision blocks when freeze_vision is false); the phase's model is saved merged
    lora_rank: int = 0  # 0 = off: every parameter trains
    lora_alpha: float | None = None  # None = 2 x lora_rank
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = LORA_MODULES

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError("GRPO needs num_generations >= 2 (advantages are relative within a group)")
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ConfigError("steps and prompts_per_step must be >= 1")
        if self.beta < 0:
            raise ConfigError(f"beta (KL coefficient) must be >= 0, got {self.beta}")
        if self.prompts_per_rollout is not None and (
                self.prompts_per_rollout < self.prompts_per_step or self.prompts_per_rollout % self.prompts_per_step):
            raise ConfigError(f"prompts_per_rollout ({self.prompts_per_rollout}) must be a multiple of "
                              f"prompts_per_step ({self.prompts_per_step})")
        if self.per_device_batch is not None and self.per_device_batch < 1:
            raise ConfigError(f"per_device_batch must be >= 1 or null, got {self.per_device_batch}")
        if min(self.max_prompt_length, self.max_completion_length, self.save_steps) < 1:
            raise ConfigError("max_prompt_length, max_completion_length and save_steps must be >= 1")
        if self.rewards is not None and not self.rewards:
            raise ConfigError("rewards must name at least one reward function, or be null for the role's")
        if self.reward_weights is not None and (
                any(not math.isfinite(w) for w in self.reward_weights)
                or (self.rewards is not None and len(self.reward_weights) != len(self.rewards))):
            raise ConfigError(f"reward_weights {list(self.reward_weights)} must be finite numbers, one per reward "
                              f"in {list(self.rewards or [])}")
        if self.vllm_mode not in VLLM_MODES:
            raise ConfigError(f"vllm_mode must be one of {list(VLLM_MODES)}, got {self.vllm_mode!r}")
        if self.vllm_server_url is not None and not self.vllm_server_url.startswith(("http://", "https://")):
            raise ConfigError(f"vllm_server_url must look like http://host:8000, got {self.vllm_server_url!r}")
        if not 0 < self.vllm_gpu_memory_utilization < 1 or self.vllm_tensor_parallel_size < 1:
            raise ConfigError("need 0 < vllm_gpu_memory_utilization < 1 and vllm_tensor_parallel_size >= 1")
        self._check_lora()
        require("", ("lr", self.lr, self.lr > 0, "> 0"),
                ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
                ("max_grad_norm", self.max_grad_norm, self.max_grad_norm > 0, "> 0"),
                ("temperature", self.temperature, self.temperature > 0, "> 0 (GRPO samples)"))
        try:  # the sampling knobs GRPO shares with every sampler, checked by the one rule (`Knobs`)
            Knobs(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed).check_knobs()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _check_lora(self) -> None:
        check_lora("", self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_target_modules)

    @property
    def rollout_prompts(self) -> int:
        """Prompts per rollout batch (one step)."""
        return self.prompts_per_rollout or self.prompts_per_step

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per step (rollout batch)."""
        return self.rollout_prompts // self.prompts_per_step


def check_lora(prefix: str, rank: int, alpha: float | None, dropout: float, modules: tuple[str, ...]) -> None:
    """The LoRA settings' ranges, one rule for a GRPO phase (``prefix`` "") and the SFT objective
    (``prefix`` "evolve.sft_"): a `ConfigError` naming the key and its range."""
    if not 0 <= rank <= MAX_LORA_RANK:
        raise ConfigError(f"{prefix}lora_rank must be 0 (off) .. {MAX_LORA_RANK}, got {rank}")
    if alpha is not None and not 0 < alpha <= MAX_LORA_ALPHA:
        raise ConfigError(f"{prefix}lora_alpha must be in (0, {MAX_LORA_ALPHA:g}] or null (2 x lora_rank), got {alpha}")
    if not 0 <= dropout < 1:  # NaN fails too
        raise ConfigError(f"{prefix}lora_dropout must be in [0, 1), got {dropout}")
    unknown = [m for m in modules if m not in LORA_MODULES]
    if unknown or not modules:
        raise ConfigError(f"{prefix}lora_target_modules must name some of the language model's linear layers "
                          f"{list(LORA_MODULES)}, got {list(modules)}")


SFT_SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class SFTPhase(LoraKnobs):
    """The reasoner's other objective, SFT on its own agreeing chains (`visplay.evolve.sft`), read
    by nothing else. Its keys sit flat in the evolve section (``evolve.sft_epochs``, ...: the
    presets' spelling); `EvolveConfig.sft` groups them here, where they are checked together."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    schedule: str = "constant"  # the learning-rate schedule (a transformers name: constant, cosine, linear)
    warmup: float = 0.0  # share of the steps spent warming up
    per_device_batch: int | None = None  # rows per forward/backward per GPU; None = batch_size / processes
    #   (the rest of batch_size is gradient accumulation, `visplay.evolve.sft.sft_batches`)
    gradient_checkpointing: bool = False  # on for 3B/7B presets
    # LoRA (peft, `visplay.evolve.lora`): adapters on the language model's `lora_target_modules` and the merger
    # (the vision tower stays frozen under SFT); the model is saved merged, a plain HF checkpoint
    lora_rank: int = 0  # 0 = off: every parameter but the vision tower trains
    lora_alpha: float | None = None  # None = 2 x lora_rank
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = LORA_MODULES

    def __post_init__(self) -> None:
        if self.per_device_batch is not None and not 1 <= self.per_device_batch <= self.batch_size:
            raise ConfigError(f"evolve.sft_per_device_batch must be in [1, evolve.sft_batch_size ({self.batch_size})] "
                              f"or null, got {self.per_device_batch}")
        check_lora("evolve.sft_", self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_target_modules)
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"evolve.sft_{key} must be >= 1, got {getattr(self, key)}")
        if self.schedule not in SFT_SCHEDULES:
            raise ConfigError(f"evolve.sft_schedule must be one of {list(SFT_SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"evolve.sft_warmup must be in [0, 1), got {self.warmup}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ConfigError(f"evolve.sft_lr must be in (0, 1), got {self.lr}")

    @property
    def freeze_vision(self) -> bool:
        """The SFT never trains the vision tower (`visplay.models.freeze_vision_tower`); LoRA adapts the merger."""
        return True

    def describe(self, rows: int | None = None) -> str:
        """One line for a model card or the plan: what this phase trains (on ``rows`` chains)."""
        of = f" of {rows} chains" if rows is not None else ""
        lora = f", LoRA rank {self.lora_rank} (saved merged)" if self.lora else ""
        return (f"{self.epochs} epochs{of}, batch {self.batch_size}, lr {self.lr:g} ({self.schedule}, warmup "
                f"{self.warmup:g}){lora}")


@dataclass
class EvolveConfig(Sampling):
    """The self-evolution loop; its sampling knobs are those of the questions, labels and the
    questioner reward (its eval stage uses the `eval` section). Ablations: the three switches at the end."""

    SECTION = "evolve"

    iterations: int = 3
    source: str = "world:unlabeled"  # or folder:/path, parquet:/path (Vision-SR1 layout)
    source_objects: tuple[int, ...] | None = None  # world sources: (min, max) objects per scene, the ladder's
    #   unlabeled levels (e.g. [6, 8] above a base labelled on 1..5); None = the `world` section's range
    ladder: bool = False  # world sources: iteration t draws only level min + t - 1 of source_objects (one
    #   difficulty step per round, as in Lee et al. 2025); the level is the generator's knob, never an answer
    survey_images: int = 0  # label-free curriculum (visplay/evolve/curriculum.py): the base reasoner answers one
    #   question about each of this many unseen images, and every iteration takes the unseen ones whose answers
    #   were shortest (easiest first); 0 = the source's own order
    questioner_images: int = 64  # images for the questioner's GRPO phase, per iteration
    images_per_iteration: int = 128  # images the trained questioner writes questions for
    questions_per_image: int = 1
    reward_samples: int = 10  # m: frozen-reasoner answers per question in the questioner reward
    label_samples: int = 9  # m: reasoner answers per question for the silver label
    band_low: float = 0.25  # the reasoner trains on questions whose agreement c is in [band_low, band_high]
    band_high: float = 0.75  #   (VisPlay's band; [0.7, 1] = an agreement threshold, the ladder's filter)
    band_low_from: int = 1  # the first iteration band_low applies to; earlier ones keep c in [0, band_high] (a guard
    #   for the frontier rounds only, where members are least sure: docs/experiments.md, session 18)
    accumulate_labels: bool = False  # train each reasoner on the kept labels of every iteration so far
    stop_agreement: float | None = None  # end the run when the labels' mean agreement reaches this (collapse guard)
    min_kept: int = 1  # with a committee: a round that keeps fewer new labels than this ends the run before training
    #   (the frontier has thinned out: nothing further agrees); 1 = only a round that keeps none
    min_valid_share: float | None = None  # questioner drift guard: keep the previous questioner when under this
    #   share of the trained one's questions parse and fewer than the previous one's do (label-free); None = off
    advance_kept_share: float | None = None  # ladder: climb after an iteration only if the share of its level's
    #   questions kept reached this (label-free); else repeat the level. None = one level per iteration
    diversity_threshold: float = 0.5
    max_new_tokens: int = 64
    min_pixels: int | None = None  # real images are resized into [min_pixels, max_pixels] (reference 512² .. 2048²)
    max_pixels: int | None = None
    image_column: str = "images"  # parquet sources: the column holding the images (Vision-SR1 layout)
    allow_outside_source: bool = False  # parquet sources: read image path strings outside the parquet's folder
    chunk_size: int = 32  # images (questions) per durable part of the generation and labeling stages
    grader_timeout: float = 5.0
    grader_workers: int = 1
    report_to: tuple[str, ...] = ("tensorboard",)
    questioner: GRPOPhase = field(default_factory=GRPOPhase)
    reasoner: GRPOPhase = field(default_factory=GRPOPhase)
    diversity_penalty: bool = True  # ablation: False drops the penalty
    train_questioner: bool = True  # ablation: False keeps the base questioner frozen
    labels: str = "majority"  # ablation: "questioner" trains on the questioner's own answers
    committee: tuple[str, ...] = ()  # more labellers beside the reasoner: model dirs/names, or url=http://host:port/v1
    agreement: str = "answer"  # answer: vote on final answers | trace: on the task's canonical trace key (world)
    #                            | chain: on the chain's own clauses, order-free (any task; answers.committee.chain_key)
    coevolve: bool = False  # reasoner_objective sft: local committee members train on their own agreeing chains too
    reasoner_objective: str = "grpo"  # grpo: the reasoner's GRPO on the labels | sft: SFT on its own agreeing chains
    sft_epochs: int = 3
    sft_batch_size: int = 16
    sft_lr: float = 1e-4
    sft_schedule: str = "constant"  # the SFT's learning-rate schedule (a transformers name: constant, cosine, linear)
    sft_warmup: float = 0.0  # share of the SFT's steps spent warming up
    sft_per_device_batch: int | None = None  # rows per forward/backward per GPU; None = sft_batch_size / processes
    sft_gradient_checkpointing: bool = False  # on for 3B/7B presets
    sft_lora_rank: int = 0  # LoRA for the SFT objective (0 = off); saved merged; refused under ZeRO-3/FSDP
    sft_lora_alpha: float | None = None  # None = 2 x sft_lora_rank
    sft_lora_dropout: float = 0.05
    sft_lora_target_modules: tuple[str, ...] = LORA_MODULES
    replay_images: int = 0  # world ladders: images per iteration from the levels below the current one,
    #   questioned and labelled like the others (self-labelled replay; never the oracle); other sources: ignored

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1:
            raise ConfigError(f"evolve.iterations must be >= 1, got {self.iterations}")
        if self.min_valid_share is not None and not 0 <= self.min_valid_share <= 1:
            raise ConfigError(f"evolve.min_valid_share must be in [0, 1] or null, got {self.min_valid_share}")
        if not 0 <= self.band_low <= self.band_high <= 1:
            raise ConfigError(f"need 0 <= evolve.band_low <= evolve.band_high <= 1, got {self.band_low}, {self.band_high}")
        if self.band_low_from < 1:
            raise ConfigError(f"evolve.band_low_from must be an iteration >= 1, got {self.band_low_from}")
        if self.source_objects is not None and (len(self.source_objects) != 2
                                                or not 0 <= self.source_objects[0] <= self.source_objects[1]):
            raise ConfigError(f"evolve.source_objects must be [min, max] with 0 <= min <= max, got {self.source_objects}")
        if self.advance_kept_share is not None and not 0 < self.advance_kept_share <= 1:
            raise ConfigError(f"evolve.advance_kept_share must be in (0, 1] with evolve.ladder=true, or null; "
                              f"got {self.advance_kept_share} (ladder {self.ladder})")
        if self.stop_agreement is not None and not 0 < self.stop_agreement <= 1:
            raise ConfigError(f"evolve.stop_agreement must be in (0, 1] or null, got {self.stop_agreement}")
        if self.agreement not in AGREEMENT_MODES:
            raise ConfigError(f"evolve.agreement must be one of {list(AGREEMENT_MODES)}, got {self.agreement!r}")
        if self.reasoner_objective not in ("grpo", "sft"):
            raise ConfigError(f"evolve.reasoner_objective must be 'grpo' or 'sft', got {self.reasoner_objective!r}")
        if self.min_kept < 1:
            raise ConfigError(f"evolve.min_kept must be >= 1 (a round that keeps fewer labels ends the run), "
                              f"got {self.min_kept}")
        if self.survey_images < 0:
            raise ConfigError(f"evolve.survey_images must be 0 (off) or at least evolve.images_per_iteration "
                              f"({self.images_per_iteration}): the pool each iteration takes its images from; "
                              f"got {self.survey_images}")
        if self.replay_images < 0:
            raise ConfigError(f"evolve.replay_images must be >= 0, got {self.replay_images}")
        self.sft  # noqa: B018 -- the SFT keys, checked as one phase (`SFTPhase`)
        for entry in self.committee:
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigError(f"evolve.committee entries must be model paths/names or url=..., got {entry!r}")
            if entry.startswith("url="):
                base_url("evolve.committee", entry[4:])
        if self.labels not in ("majority", "questioner"):
            raise ConfigError(f"evolve.labels must be 'majority' or 'questioner', got {self.labels!r}")
        for key in ("questioner_images", "images_per_iteration", "questions_per_image", "reward_samples",
                    "label_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"evolve.{key} must be >= 1, got {getattr(self, key)}")
        require("evolve.", ("chunk_size", self.chunk_size, self.chunk_size >= 1, ">= 1"),
                ("grader_timeout", self.grader_timeout, self.grader_timeout > 0, "> 0 seconds"),
                ("grader_workers", self.grader_workers, self.grader_workers >= 0, ">= 0 (0 = grade in process)"),
                ("temperature", self.temperature, self.temperature > 0, "> 0 (the loop samples)"),
                ("diversity_threshold", self.diversity_threshold, 0 <= self.diversity_threshold <= 1, "in [0, 1]"))
        try:
            check_pixel_range(self.min_pixels, self.max_pixels)
        except ValueError as e:
            raise ConfigError(f"evolve: {e}") from e
        for role, (names, weights) in ROLE_REWARDS.items():
            phase = getattr(self, role)
            rewards = names if phase.rewards is None else phase.rewards
            default = weights if rewards == names else (1.0,) * len(rewards)
            if len(phase.reward_weights or default) != len(rewards):
                raise ConfigError(f"evolve.{role}.reward_weights needs one weight per reward in {list(rewards)}")
            setattr(self, role, dataclasses.replace(phase, rewards=tuple(rewards),
                                                    reward_weights=tuple(phase.reward_weights or default)))

    def band(self, t: int) -> tuple[float, float]:
        """The agreement band iteration ``t``'s labels are kept in: ``band_low`` from iteration
        ``band_low_from`` on, 0 before it."""
        return (self.band_low if t >= self.band_low_from else 0.0), self.band_high

    def band_text(self) -> str:
        """The band as the plan and the report say it."""
        text = f"[{self.band_low:g}, {self.band_high:g}]"
        if self.band_low_from <= 1:
            return text
        return f"[0, {self.band_high:g}] before iteration {self.band_low_from}, {text} from it"

    @property
    def ends_when_nothing_kept(self) -> bool:
        """With a committee, an iteration that kept no question (fewer than `min_kept`) ends the run
        (the committee agreed on nothing at this level, so later levels will not do better); a lone reasoner carries itself
        over to the next iteration instead. The dry-run plan says which."""
        return bool(self.committee)

    @property
    def sft(self) -> SFTPhase:
        """The SFT objective's settings (``sft_*``), as one phase."""
        return SFTPhase(self.sft_epochs, self.sft_batch_size, self.sft_lr, self.sft_schedule, self.sft_warmup,
                        self.sft_per_device_batch, self.sft_gradient_checkpointing, self.sft_lora_rank,
                        self.sft_lora_alpha, self.sft_lora_dropout, tuple(self.sft_lora_target_modules))


@dataclass
class HardwareConfig:
    """Where a run's processes go, and the GPU layout its dry-run plan assumes.

    ``launcher`` and ``generation_shards`` decide where the loop's heavy parts run. The other
    fields only size the plan's memory and token estimates (`visplay evolve --dry-run`,
    docs/scaling.md): the processes and their sharding come from the launcher itself (its own
    ``--config_file configs/accelerate/...``), which the plan also reads for the memory layout.
    """

    nodes: int = 1
    gpus_per_node: int = 1
    gpu_memory_gib: float = 80.0
    peak_tflops: float = 989.0  # dense bf16 peak per GPU, for MFU (H100 SXM: 989)
    # How the loop (one controller process) runs its heavy parts elsewhere (visplay/evolve/worker.py):
    launcher: str | None = None  # GRPO phases run as `{launcher} -m visplay.evolve.worker grpo ...` and each SFT
    #   member as `{launcher} -m visplay.evolve.worker sft ...` (one after another, each on every GPU), e.g.
    #   "accelerate launch --config_file {repo}/configs/accelerate/zero3.yaml"; None = in process
    generation_shards: int = 1  # questions/labels with the transformers sampler: this many local worker
    #   processes, worker r on GPU r (CUDA_VISIBLE_DEVICES=r; on a CPU each gets its share of the cores),
    #   each taking items r, r+shards, ...; without a launcher the same slots fine-tune a co-evolving
    #   committee's members at once, one GPU each (on a CPU: one per core, `evolve.committee.member_slots`)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1 or self.gpu_memory_gib <= 0 or self.peak_tflops <= 0:
            raise ConfigError("hardware: nodes, gpus_per_node, gpu_memory_gib and peak_tflops must be positive")
        if self.generation_shards < 1:
            raise ConfigError(f"hardware.generation_shards must be >= 1, got {self.generation_shards}")
        if self.launcher is not None and not self.launcher.strip():
            raise ConfigError("hardware.launcher must be a command (e.g. 'accelerate launch --config_file ...') or null")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node
