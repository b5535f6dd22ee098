"""Typed configs: dataclass defaults -> YAML preset -> `a.b=value` overrides, validated on load.

Unknown keys are errors that name the key and the file, never silently ignored; missing required
keys are errors that name the key. Presets: `presets/tiny.yaml` (the embedded CPU model) and the
real-scale `qwen2_5_vl_3b`, `qwen2_5_vl_7b`, `mimo_vl_7b` (docs/scaling.md).
Test: `pytest tests/test_config.py tests/test_scale.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visplay.answers.committee import AGREEMENT_MODES
from visplay.arch import ArchConfig
from visplay.data.images import check_pixel_range
from visplay.sampling.base import Knobs, SamplingParams
from visplay.sampling.openai import display_url
from visplay.tiny.pretrain import PretrainConfig
from visplay.worlds.questions import FAMILIES, check_families
from visplay.worlds.scene import SPLITS, WorldConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = REPO_ROOT / "presets"
#: Names that resolve to models shipped in this repository.
EMBEDDED_MODELS = {"tiny": REPO_ROOT / "models" / "tiny", "walk-random": REPO_ROOT / "models" / "walk-random"}


#: world scene indices from here on are replay scenes (`Config.scene_world`), far above any run's draws
REPLAY_START = 10**9


class ConfigError(ValueError):
    pass


@dataclass
class Sampling(Knobs):
    """The sampling knobs (`visplay.sampling.base.Knobs`: temperature, top_k, top_p,
    max_new_tokens, seed) as a config section's keys; the sections that generate outside GRPO
    (eval, bench, evolve) are this, so the names and the checks are the same everywhere."""

    SECTION: typing.ClassVar[str] = "sampling"  # the section's name in the config tree, for errors
    top_k: int = 40
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        try:
            self.check_knobs(f"{self.SECTION}.")
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def params(self, n: int = 1, **changes: Any) -> SamplingParams:
        """These knobs as one generate call's parameters (``changes`` e.g. temperature=0 for greedy)."""
        return SamplingParams(n=n, **{**self.knobs(), **changes})


@dataclass
class EvalConfig(Sampling):
    """World evaluation (`visplay eval` and the loop's eval stage): greedy, maj@k and pass@k on
    scenes of ``split`` never used in training."""

    SECTION = "eval"
    split: str = "heldout"
    n: int = 500
    k: int = 10
    families: tuple[str, ...] = tuple(FAMILIES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in SPLITS or self.split == "train":
            raise ConfigError(f"eval.split must be one of {[s for s in SPLITS if s != 'train']}, got {self.split!r}")
        if self.n < 1 or self.k < 1:
            raise ConfigError(f"eval.n and eval.k must be >= 1, got n={self.n}, k={self.k}")
        check_families(self.families)


def base_url(key: str, url: str) -> urllib.parse.SplitResult:
    """``url`` split, if it is an http(s) API base; else a ConfigError naming ``key`` (credentials
    in the URL are never echoed)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} must be an http(s) base URL like http://127.0.0.1:8000/v1, got {display_url(url)!r}")
    return parts


#: The reference evaluation's data.min_pixels / max_pixels (benchmark images are resized into it).
PAPER_MIN_PIXELS = 262_144
PAPER_MAX_PIXELS = 4_194_304


@dataclass
class BenchConfig(Sampling):
    """Benchmark evaluation (`visplay eval --benchmarks`): greedy and seeded by default."""

    SECTION = "bench"
    temperature: float = 0.0
    top_k: int = 0
    max_new_tokens: int = 2048
    batch_size: int = 16  # items per generate() call (one GPU batch); completions are saved after each
    limit: int | None = None  # first N items of every benchmark (smoke runs)
    min_pixels: int | None = PAPER_MIN_PIXELS
    max_pixels: int | None = PAPER_MAX_PIXELS
    grader_timeout: float = 10.0  # seconds per symbolic comparison before its worker is killed
    grader_workers: int = 1  # 0 = compare in-process, no timeout

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError(f"bench.batch_size and bench.limit must be >= 1, got {self.batch_size}, {self.limit}")
        if self.grader_timeout <= 0 or self.grader_workers < 0:
            raise ConfigError("bench.grader_timeout must be > 0 and bench.grader_workers >= 0")
        try:
            check_pixel_range(self.min_pixels, self.max_pixels)
        except ValueError as e:
            raise ConfigError(f"bench: {e}") from e


DEFAULT_JUDGE_KEY_ENV = "VISPLAY_JUDGE_API_KEY"


@dataclass
class JudgeConfig:
    """The LLM judge of judged benchmarks (`visplay.eval.judge`): off until ``url`` and ``model`` are
    set. ``url`` is an OpenAI-compatible API base, e.g. ``http://host:8000/v1``; the key is read from
    the environment variable ``api_key_env`` names, never from a config or the command line."""

    url: str | None = None
    model: str | None = None
    api_key_env: str = DEFAULT_JUDGE_KEY_ENV
    prompt: str = "prompts/judge.txt"  # template with {question}, {reference}, {candidate}; relative = to the repo
    cache: str | None = None  # verdict cache (default: OUT/judge_cache.jsonl); share it across runs
    timeout: float = 60.0  # seconds per request
    max_retries: int = 5  # retries after the first attempt, for transient failures
    backoff: float = 1.0  # first wait in seconds; doubles each retry
    max_backoff: float = 30.0
    max_tokens: int = 512
    workers: int = 4  # concurrent requests

    def __post_init__(self) -> None:
        if (self.url is None) != (self.model is None) or self.model == "":
            raise ConfigError("judge.url and judge.model go together (--judge-url with --judge-model: the model "
                              "name the endpoint serves)")
        if self.url is not None:
            parts = base_url("judge.url", self.url)
            if parts.username or parts.password:
                raise ConfigError(f"judge.url must not carry credentials; put the API key in ${self.api_key_env}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or ""):
            raise ConfigError(f"judge.api_key_env must be an environment variable name, got {self.api_key_env!r}")
        if self.timeout <= 0 or self.max_retries < 0 or self.backoff < 0 or self.workers < 1 or self.max_tokens < 1:
            raise ConfigError("judge timeout, backoff, max_tokens and workers must be positive, max_retries >= 0")

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def prompt_path(self) -> Path:
        path = Path(self.prompt).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def base(self) -> str:
        """The API base without a trailing slash or a pasted ``/chat/completions``."""
        base = (self.url or "").rstrip("/")
        return base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base


@dataclass
class SelfTrainConfig:
    """`visplay self-train`: one round of rejection-sampling SFT on majority labels of unlabeled
    questions, measured by held-out greedy accuracy before and after (`visplay.eval.selftrain`)."""

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


VLLM_MODES = ("colocate", "server")
#: The language model's linear layers in every Qwen2.5-VL decoder layer (attention, then SwiGLU MLP):
#: LoRA's default targets, as in the Qwen2.5-VL LoRA recipes (all linear layers of the LM).
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_LORA_RANK = 1024  # above this an adapter is as big as the layers of a 3B model: train them fully
MAX_LORA_ALPHA = 65536.0
#: Each role's rewards and weights when its phase names none: the questioner's min(c, 1-c) minus the
#: diversity penalty; the reasoner's 0.9 accuracy + 0.1 format (the reference's weights).
ROLE_REWARDS = {"questioner": (("questioner",), (1.0,)), "reasoner": (("accuracy", "format"), (0.9, 0.1))}


@dataclass
class GRPOPhase:
    """One GRPO phase (questioner or reasoner), in the reference's (EasyR1) units.

    A *step* is one rollout batch: ``prompts_per_rollout`` prompts x ``num_generations`` samples,
    consumed by ``prompts_per_rollout / prompts_per_step`` optimizer updates of
    ``prompts_per_step`` prompts each (EasyR1 ``rollout_batch_size`` 512 / ``global_batch_size``
    128 = 4 updates per step). ``per_device_batch`` completions go through one forward/backward on
    one device; the rest is gradient accumulation (`visplay.train.grpo_args` does the arithmetic).
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
    # LoRA (TRL's peft_config; visplay/lora.py): adapters on the language model's `lora_target_modules`
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
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")
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
        for key, value, ok, need in (("lr", self.lr, self.lr > 0, "> 0"),
                                     ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
                                     ("max_grad_norm", self.max_grad_norm, self.max_grad_norm > 0, "> 0"),
                                     ("temperature", self.temperature, self.temperature > 0, "> 0 (GRPO samples)"),
                                     ("seed", self.seed, 0 <= self.seed < 2**31, "in [0, 2**31)")):
            if not ok:  # NaN fails every comparison, so it is refused too
                raise ConfigError(f"{key} must be {need}, got {value}")

    def _check_lora(self) -> None:
        if not 0 <= self.lora_rank <= MAX_LORA_RANK:
            raise ConfigError(f"lora_rank must be 0 (off) .. {MAX_LORA_RANK}, got {self.lora_rank}")
        if self.lora_alpha is not None and not 0 < self.lora_alpha <= MAX_LORA_ALPHA:
            raise ConfigError(f"lora_alpha must be in (0, {MAX_LORA_ALPHA:g}] or null (2 x lora_rank), got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:  # NaN fails too
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        unknown = [m for m in self.lora_target_modules if m not in LORA_MODULES]
        if unknown or not self.lora_target_modules:
            raise ConfigError(f"lora_target_modules must name some of the language model's linear layers "
                              f"{list(LORA_MODULES)}, got {list(self.lora_target_modules)}")

    @property
    def lora(self) -> bool:
        """True when the phase trains LoRA adapters instead of every parameter."""
        return self.lora_rank > 0

    @property
    def lora_scale_alpha(self) -> float:
        """``lora_alpha``, defaulting to 2 x rank (the adapter's update is scaled by alpha / rank)."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    @property
    def rollout_prompts(self) -> int:
        """Prompts per rollout batch (one step)."""
        return self.prompts_per_rollout or self.prompts_per_step

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per step (rollout batch)."""
        return self.rollout_prompts // self.prompts_per_step


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
    questioner_images: int = 64  # images for the questioner's GRPO phase, per iteration
    images_per_iteration: int = 128  # images the trained questioner writes questions for
    questions_per_image: int = 1
    reward_samples: int = 10  # m: frozen-reasoner answers per question in the questioner reward
    label_samples: int = 9  # m: reasoner answers per question for the silver label
    band_low: float = 0.25  # the reasoner trains on questions whose agreement c is in [band_low, band_high]
    band_high: float = 0.75  #   (VisPlay's band; [0.7, 1] = an agreement threshold, the ladder's filter)
    accumulate_labels: bool = False  # train each reasoner on the kept labels of every iteration so far
    stop_agreement: float | None = None  # end the run when the labels' mean agreement reaches this (collapse guard)
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
    coevolve: bool = False  # reasoner_objective sft: local committee members train on their own agreeing chains too
    reasoner_objective: str = "grpo"  # grpo: the reasoner's GRPO on the labels | sft: SFT on its own agreeing chains
    sft_epochs: int = 3
    sft_batch_size: int = 16
    sft_lr: float = 1e-4
    replay_images: int = 0  # world ladders: images per iteration from the levels below the current one,
    #   questioned and labelled like the others (self-labelled replay; never the oracle)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1:
            raise ConfigError(f"evolve.iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.band_low <= self.band_high <= 1:
            raise ConfigError(f"need 0 <= evolve.band_low <= evolve.band_high <= 1, got {self.band_low}, {self.band_high}")
        if self.source_objects is not None and (len(self.source_objects) != 2
                                                or not 0 <= self.source_objects[0] <= self.source_objects[1]):
            raise ConfigError(f"evolve.source_objects must be [min, max] with 0 <= min <= max, got {self.source_objects}")
        if self.stop_agreement is not None and not 0 < self.stop_agreement <= 1:
            raise ConfigError(f"evolve.stop_agreement must be in (0, 1] or null, got {self.stop_agreement}")
        if self.agreement not in AGREEMENT_MODES:
            raise ConfigError(f"evolve.agreement must be one of {list(AGREEMENT_MODES)}, got {self.agreement!r}")
        if self.reasoner_objective not in ("grpo", "sft"):
            raise ConfigError(f"evolve.reasoner_objective must be 'grpo' or 'sft', got {self.reasoner_objective!r}")
        if self.coevolve and (self.reasoner_objective != "sft" or not self.committee):
            raise ConfigError("evolve.coevolve trains the committee's members by SFT on their own chains: it needs "
                              "evolve.reasoner_objective=sft and at least one evolve.committee member")
        if self.reasoner_objective == "sft" and self.reasoner.lora:
            raise ConfigError(f"evolve.reasoner.lora_rank={self.reasoner.lora_rank} is for the reasoner's GRPO phase; "
                              "evolve.reasoner_objective=sft fine-tunes every parameter: set one of them back "
                              "(lora_rank=0 or reasoner_objective=grpo)")
        if self.coevolve and any(e.startswith("url=") for e in self.committee):
            raise ConfigError("evolve.coevolve cannot train a url= committee member (a server); use local model dirs")
        if self.replay_images < 0:
            raise ConfigError(f"evolve.replay_images must be >= 0, got {self.replay_images}")
        if self.replay_images and not (self.ladder and self.source.startswith("world")):
            raise ConfigError("evolve.replay_images draws world scenes below the ladder's level: it needs "
                              "evolve.ladder=true and a world: source")
        for key in ("sft_epochs", "sft_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"evolve.{key} must be >= 1, got {getattr(self, key)}")
        if not (isinstance(self.sft_lr, (int, float)) and 0 < self.sft_lr < 1):
            raise ConfigError(f"evolve.sft_lr must be in (0, 1), got {self.sft_lr}")
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
        for key, value, ok, need in (
                ("chunk_size", self.chunk_size, self.chunk_size >= 1, ">= 1"),
                ("grader_timeout", self.grader_timeout, self.grader_timeout > 0, "> 0 seconds"),
                ("grader_workers", self.grader_workers, self.grader_workers >= 0, ">= 0 (0 = grade in process)"),
                ("temperature", self.temperature, self.temperature > 0, "> 0 (the loop samples)"),
                ("diversity_threshold", self.diversity_threshold, 0 <= self.diversity_threshold <= 1, "in [0, 1]")):
            if not ok:  # NaN fails every comparison, so it is refused too
                raise ConfigError(f"evolve.{key} must be {need}, got {value}")
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


#: How stages outside GRPO sample: in-process transformers, an OpenAI-compatible server (used as is
#: or launched per stage with ``launch``), or a vLLM server launched per stage from its own env.
SAMPLER_BACKENDS = ("transformers", "openai", "vllm")
#: backend vllm, when ``launch``/``url`` are not given (`vllm` of requirements/serve-vllm.txt on PATH)
VLLM_LAUNCH = "vllm serve {model} --host {host} --port {port}"
VLLM_URL = "http://127.0.0.1:8000/v1"


@dataclass
class SamplerConfig:
    """How every stage samples outside GRPO (questions, silver labels, the questioner reward, world
    and benchmark eval); `visplay.sampling.factory.open_sampler` opens it.

    ``backend``: ``transformers`` loads the stage's model in process (`TransformersSampler`).
    ``openai``: any OpenAI-compatible chat-completions server at ``url`` (`vllm serve`, SGLang, TGI,
    `visplay serve`); the loop's models change every stage, so ``launch`` (a command template with
    ``{model}``, ``{port}``, ``{host}``, ``{python}``, ``{local_rank}``) starts one server per stage
    on that stage's model and stops it afterwards; without ``launch`` the server at ``url`` is used as
    is (it must serve the right model). ``vllm``: ``openai`` with ``launch`` defaulting to
    ``vllm serve {model} --host {host} --port {port}`` and ``url`` to ``http://127.0.0.1:8000/v1``
    (`vllm` from the ``[vllm]`` extra, or a separate env, requirements/serve-vllm.txt: docs/scaling.md §8).
    """

    backend: str = "transformers"  # transformers | openai | vllm
    url: str | None = None  # openai/vllm: the API base, e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # environment variable holding the server's bearer token (`visplay serve --api-key-env`)
    launch: str | None = None  # openai/vllm: command that starts a server for one stage's {model}
    concurrency: int = 8  # requests in flight (one prompt, n samples, per request)
    timeout: float = 600.0  # seconds per request
    retries: int = 3  # retries after the first attempt, on connection errors, 429 and 5xx
    backoff: float = 1.0  # first wait in seconds; doubles each retry
    startup_timeout: float = 900.0  # seconds a launched server may take to answer /v1/models
    batch_rows: int = 256  # transformers backend: B·n rows decoded at once

    def __post_init__(self) -> None:
        if self.backend not in SAMPLER_BACKENDS:
            raise ConfigError(f"sampler.backend must be one of {list(SAMPLER_BACKENDS)}, got {self.backend!r}")
        if self.backend == "transformers" and (self.url is not None or self.launch is not None):
            raise ConfigError("sampler.url and sampler.launch are for sampler.backend openai or vllm; "
                              "set sampler.backend=openai (or pass --sampler-url) to sample through a server")
        if self.backend == "vllm":
            self.url = self.url or VLLM_URL
            self.launch = self.launch or VLLM_LAUNCH
        if self.backend == "openai" and self.url is None:
            raise ConfigError("sampler.backend openai needs sampler.url (e.g. http://127.0.0.1:8000/v1)")
        if self.url is not None:
            parts = base_url("sampler.url", self.url)
            if self.launch is not None and parts.port is None:
                raise ConfigError(f"sampler.url {self.url!r} needs an explicit port when sampler.launch starts the server")
        if self.launch is not None and "{model}" not in self.launch:
            raise ConfigError("sampler.launch needs a {model} placeholder, e.g. 'vllm serve {model} --port {port}'")
        for key, value, ok, need in (("concurrency", self.concurrency, self.concurrency >= 1, ">= 1"),
                                     ("timeout", self.timeout, self.timeout > 0, "> 0 seconds"),
                                     ("retries", self.retries, self.retries >= 0, ">= 0"),
                                     ("backoff", self.backoff, self.backoff >= 0, ">= 0 seconds"),
                                     ("startup_timeout", self.startup_timeout, self.startup_timeout > 0, "> 0 seconds"),
                                     ("batch_rows", self.batch_rows, self.batch_rows >= 1, ">= 1")):
            if not ok:  # NaN fails every comparison, so it is refused too
                raise ConfigError(f"sampler.{key} must be {need}, got {value}")

    @property
    def in_process(self) -> bool:
        """True when stages load their model here (backend transformers), not behind a server."""
        return self.backend == "transformers"


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
    launcher: str | None = None  # GRPO phases run as `{launcher} -m visplay.evolve.worker grpo ...`, e.g.
    #   "accelerate launch --config_file {repo}/configs/accelerate/zero3.yaml"; None = in process
    generation_shards: int = 1  # questions/labels with the transformers sampler: this many local worker
    #   processes, worker r on GPU r (CUDA_VISIBLE_DEVICES=r), each taking items r, r+shards, ...

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


DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Config:
    model: str = "tiny"  # embedded name, local directory, or HF repo id already in the local HF cache
    dtype: str = "float32"  # weights in memory: float32 on CPU; bfloat16 for the GPU presets
    arch: ArchConfig | None = None  # the model's shape, for --dry-run and benchmarks (None: read config.json)
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model must name a model: 'tiny', a local directory or an HF repo id")
        try:
            self.source_world  # noqa: B018 -- validates source_objects against the grid
        except ValueError as e:
            raise ConfigError(f"evolve.source_objects: {e}") from e
        if self.evolve.reasoner_objective == "sft" and self.hardware.launcher:
            raise ConfigError("evolve.reasoner_objective=sft trains in the loop's process; hardware.launcher "
                              "(multi-GPU GRPO) is for the grpo objective: unset one of them")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


    @property
    def source_world(self) -> WorldConfig:
        """The world the loop's unlabeled images come from: `world`, with `evolve.source_objects`."""
        lo_hi = self.evolve.source_objects
        if lo_hi is None:
            return self.world
        return dataclasses.replace(self.world, min_objects=lo_hi[0], max_objects=lo_hi[1])

    def source_world_at(self, t: int) -> WorldConfig:
        """Iteration ``t``'s source world: with `evolve.ladder`, the one level ``min + t - 1``
        (capped at max) of `source_objects`; otherwise the whole range."""
        w = self.source_world
        if not self.evolve.ladder:
            return w
        level = min(w.min_objects + t - 1, w.max_objects)
        return dataclasses.replace(w, min_objects=level, max_objects=level)

    def replay_world_at(self, t: int) -> WorldConfig | None:
        """Iteration ``t``'s replay world (`evolve.replay_images`): the levels below its ladder level,
        down to the `world` section's minimum; None when there is none."""
        level = self.source_world_at(t).min_objects
        if not (self.evolve.replay_images and self.evolve.ladder) or level <= self.world.min_objects:
            return None
        return dataclasses.replace(self.world, min_objects=self.world.min_objects, max_objects=level - 1)

    def scene_world(self, t: int, index: int) -> WorldConfig:
        """The world config that drew scene ``index`` of iteration ``t``'s images (replay scenes live
        at indices from `REPLAY_START` on, so an image id alone says which)."""
        replay = self.replay_world_at(t) if index >= REPLAY_START else None
        return replay or self.source_world_at(t)

    @property
    def labelled_levels(self) -> tuple[int, ...]:
        """Levels (objects per scene) the embedded base saw labels for: the `pretrain.world` range."""
        w = self.pretrain.world
        return tuple(range(w.min_objects, w.max_objects + 1))


def resolve_model(name_or_path: str) -> Path:
    """An embedded name, an existing local path, a run directory (its final reasoner), or an HF repo
    id found in the local HF cache (never downloaded: `local_files_only`). Anything else comes back
    as a path, which `visplay.models.check_model_dir` then reports as missing."""
    if name_or_path in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name_or_path]
    path = Path(name_or_path).expanduser()
    if (path / "manifest.json").is_file() and not (path / "config.json").is_file():
        from visplay.cards import final_model  # a run directory: its last trained reasoner

        return final_model(path) or path
    if path.exists() or name_or_path.count("/") != 1 or name_or_path.startswith((".", "/", "~")):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 -- not cached (or not a repo id): report the path as missing
        return path


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `--set evolve.report_to=wandb`: a list of one
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value, where) if len(options) == 1 else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


#: TRL / transformers names accepted for the same knob (TRL users type these): section class -> {alias: field}.
TRL_ALIASES: dict[str, dict[str, str]] = {
    "GRPOPhase": {"learning_rate": "lr", "max_steps": "steps",
                  "per_device_train_batch_size": "per_device_batch"},
    "PretrainConfig": {"learning_rate": "lr", "max_steps": "steps", "per_device_train_batch_size": "batch_size"},
}


def canonical_key(key: str) -> str:
    """A dotted override key with a TRL-style last part renamed (``evolve.reasoner.learning_rate`` ->
    ``evolve.reasoner.lr``), so that an override replaces the preset's value instead of clashing."""
    *path, last = key.split(".")
    cls: Any = Config
    for part in path:  # the section's dataclass, by walking the config tree's type hints
        tp = typing.get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
        if tp is None:
            return key
        cls = next((a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)), None)
        if cls is None:
            return key
    return ".".join([*path, TRL_ALIASES.get(getattr(cls, "__name__", ""), {}).get(last, last)])


def _unalias(cls: type, data: dict, where: str) -> dict:
    """Rename TRL-style keys to the field they mean; both spellings at once is an error."""
    aliases = TRL_ALIASES.get(cls.__name__, {})
    out = dict(data)
    for alias, field_name in aliases.items():
        if alias in out and alias != field_name:
            if field_name in out:
                raise ConfigError(f"{where}: {alias!r} and {field_name!r} name the same setting; give one")
            out[field_name] = out.pop(alias)
    return out


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    data = _unalias(cls, data, where)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def config_from_manifest(data: dict, where: str = "manifest.json") -> Config:
    """The config a run was started with (its manifest's ``config``), read by today's dataclasses:
    keys added since take their defaults, and keys of runs made before the config tree was unified
    are moved: the loop's eval was ``evolve.eval``; a ``sampler.url`` implied a server; the embedded
    model's shape (never read by the loop) had its own key names."""
    data = json.loads(json.dumps(data))  # a private copy
    evolve, sampler, pretrain = data.get("evolve") or {}, data.get("sampler") or {}, data.get("pretrain") or {}
    if "layers" in (pretrain.get("model") or {}):
        pretrain.pop("model")
    for key in ("accelerate_config", "strategy"):  # were only shown; the launcher's config file says them
        (data.get("hardware") or {}).pop(key, None)
    if "eval" in evolve:
        data["eval"] = evolve.pop("eval")
    if "backend" not in sampler and sampler.get("url"):
        sampler["backend"] = "openai"
    return from_dict(Config, data, where)


def load_config(preset: str | Path | None = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the preset (a name in presets/ or a YAML path), then ``key=value`` overrides."""
    data: dict = {}
    where = "defaults"
    if preset is not None:
        path = Path(preset)
        if not path.suffix:
            path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise ConfigError(f"preset {preset!r} not found (looked for {path}); known presets: {known}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        where = str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. eval.n=100)")
        key, raw = item.split("=", 1)
        _set_dotted(data, canonical_key(key.strip()), yaml.safe_load(raw))
        where = f"{where} + overrides"
    return from_dict(Config, data, where)
