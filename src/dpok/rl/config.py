"""``FinetuneConfig``: every hyperparameter of a DPOK run, grouped by the phase that reads it.

``finetune.rl`` in conf/base/parameters_finetune.yml is the one home of the defaults (tuned for the shapes
world's tiny base model on a CPU; the paper's Stable Diffusion values are in ``conf/sd15`` and
docs/algorithm.md §6). The groups follow a round (docs/algorithm.md §4), as ddpo-pytorch's ``sample.*`` /
``train.*`` do:

- ``rollout``: how many trajectories a round draws, in groups per prompt;
- ``sampler``: the shared sampler (``conf/base/parameters_sampler.yml``), the policy's DDIM steps;
- ``lora``: the adapter that trains;
- ``advantage``: how rewards become advantages (standardisation, α);
- ``value``: the learned baseline V_φ;
- ``policy``: the clipped policy-gradient steps and their optimiser;
- ``kl``: the KL regulariser to the pretrained model;
- ``runtime``: length, checkpoints, memory and precision knobs: exactly what may change when a run
  resumes (every other change is refused on resume and trains afresh).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dpok.config import SamplerConfig, Settings, from_mapping
from dpok.rl.kl import KL_FORMS
from dpok.rl.losses import CLIP_MODES, NORMALISATION_SCALES, REWARD_NORMALISATIONS

KEY_PATH = "finetune.rl"  # where these settings live in the parameters, for error messages
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
STEP_WEIGHTINGS = ("none", "equalise")
POLICY_OBJECTIVES = ("clipped_ratio", "nft")
VALUE_FEATURES = ("latent", "tweedie", "tweedie_reward")

RESUMABLE_GROUP = "runtime"
"""The one group of settings that may differ between a checkpoint and the run resuming from it."""


@dataclass(frozen=True)
class RolloutConfig(Settings):
    """What a round samples (``finetune.rl.rollout``).

    Attributes:
        g_batch: Trajectories sampled per round (prompts drawn uniformly, with replacement).
        trajectories_per_prompt: Trajectories per drawn prompt in a round, a *group* (g_batch / this many
            prompts are drawn). Above 1, each prompt's rewards can be compared within the round
            (``advantage.normalisation``), as DDPO's per-prompt statistics and GRPO's groups do.
        share_initial_noise: The trajectories of a group start from the same x_T (DanceGRPO), so their
            rewards differ only by the policy's own choices along the way.
    """

    KEY_PATH: ClassVar[str] = f"{KEY_PATH}.rollout"

    g_batch: int
    trajectories_per_prompt: int
    share_initial_noise: bool

    def __post_init__(self) -> None:
        self.integer("g_batch", 1)
        self.integer("trajectories_per_prompt", 1)
        if self.g_batch % self.trajectories_per_prompt:
            self.fail("trajectories_per_prompt", f"a divisor of {self.key('g_batch')} ({self.g_batch})")
        self.boolean("share_initial_noise")

    @property
    def prompts_per_round(self) -> int:
        return self.g_batch // self.trajectories_per_prompt


@dataclass(frozen=True)
class LoraConfig(Settings):
    """The trained adapter (``finetune.rl.lora``).

    Attributes:
        rank: LoRA rank r.
        alpha: LoRA α (the update is scaled by α/r).
        target_modules: UNet module names LoRA attaches to. The shapes world's default reaches the ResNet
            convolutions and feed-forward layers: attention-only LoRA learned nothing on the tiny model
            (docs/shapes_world.md).
    """

    KEY_PATH: ClassVar[str] = f"{KEY_PATH}.lora"

    rank: int
    alpha: float
    target_modules: tuple[str, ...]

    def __post_init__(self) -> None:
        self.integer("rank", 1)
        self.number("alpha", gt=0)
        targets = self.target_modules
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
            self.fail("target_modules", "a non-empty list of module names")
        self.set("target_modules", tuple(targets))


@dataclass(frozen=True)
class AdvantageConfig(Settings):
    """How a reward becomes an advantage A = α·(r̃ − V) (``finetune.rl.advantage``).

    Attributes:
        reward_weight: α, the advantage's scale.
        normalisation: How rewards are standardised to r̃: ``"none"`` (the paper), ``"per_prompt"`` (DDPO:
            each prompt's last ``per_prompt_window`` rewards) or ``"group"`` (GRPO: the round's trajectories
            of the same prompt draw; a group whose rewards are all equal teaches nothing and is left out of
            the buffer).
        per_prompt_window: Rewards remembered per prompt for the ``per_prompt`` standardisation.
        per_prompt_min_count: Below this many rewards a prompt uses the batch's statistics.
        per_prompt_scale: What the centred reward is divided by: ``"prompt"``, the prompt's (or group's)
            own std (DDPO, GRPO), or ``"pooled"``, the std of all prompts' remembered (or the round's
            group-centred) rewards, so that nearly solved prompts (tiny std) do not get huge advantages
            for one unlucky sample.
    """

    KEY_PATH: ClassVar[str] = f"{KEY_PATH}.advantage"

    reward_weight: float
    normalisation: str
    per_prompt_window: int
    per_prompt_min_count: int
    per_prompt_scale: str

    def __post_init__(self) -> None:
        self.number("reward_weight", gt=0)
        self.choice("normalisation", REWARD_NORMALISATIONS)
        self.integer("per_prompt_window", 2)
        self.integer("per_prompt_min_count", 2)
        if self.per_prompt_min_count > self.per_prompt_window:
            self.fail("per_prompt_min_count", f"<= {self.key('per_prompt_window')} ({self.per_prompt_window})")
        self.choice("per_prompt_scale", NORMALISATION_SCALES)


@dataclass(frozen=True)
class ValueConfig(Settings):
    """The learned baseline V_φ(x_t, t, z) (``finetune.rl.value``).

    Attributes:
        enabled: Learn V_φ and use A = α·(r̃ − V); otherwise A = α·r̃. V is evaluated on a transition when it
            enters the buffer, before V_φ is fitted on its reward (``dpok.rl.baseline``).
        features: What V_φ sees besides the prompt and step: ``"latent"`` (x_t, the paper), ``"tweedie"``
            (x_t and Tweedie's x̂_0), ``"tweedie_reward"`` (those and the reward of the image decoded from
            x̂_0, standardised like the final reward; one extra decode and reward call per trained transition).
        shrinkage: Use λ_t·V_φ as the baseline, λ_t ∈ [0, 1] the least-squares multiple of V_φ's
            out-of-sample predictions at step t over recent rounds (``dpok.rl.value``): V_φ adds no variance
            at steps where it does not predict the reward.
        shrinkage_decay: Weight of a round's out-of-sample predictions in λ_t a round later (0.8: the last
            five rounds carry two thirds of it).
        learning_rate: AdamW learning rate of V_φ.
        batch_size: Transitions per value step.
        steps: Value steps per round (before the policy steps).
    """

    KEY_PATH: ClassVar[str] = f"{KEY_PATH}.value"

    enabled: bool
    features: str
    shrinkage: bool
    shrinkage_decay: float
    learning_rate: float
    batch_size: int
    steps: int

    def __post_init__(self) -> None:
        self.boolean("enabled")
        self.choice("features", VALUE_FEATURES)
        self.boolean("shrinkage")
        self.number("shrinkage_decay", ge=0, lt=1)
        self.number("learning_rate", gt=0)
        self.integer("batch_size", 1)
        self.integer("steps", 0)


@dataclass(frozen=True)
class PolicyConfig(Settings):
    """The policy steps: buffer, micro-batches, the clipped surrogate and its optimiser (``finetune.rl.policy``).

    Attributes:
        objective: What a policy step minimises: ``"clipped_ratio"`` (DPOK: the clipped importance-weighted
            surrogate on the sampler's transitions, with the buffer and V_φ) or ``"nft"`` (DiffusionNFT's
            negative-aware loss on the round's images noised again by the forward process, ``dpok.rl.nft``:
            no log-probabilities, no buffer, every step the same weight; needs ``value.enabled: false``).
        nft_strength: λ of ``nft``: each image moves the guided prediction at most 1/λ of the way towards
            (or away from) denoising to it.
        nft_advantage_clip: c of ``nft``: an image's optimality is ½ + ½·clip(A / c, −1, 1).
        learning_rate: AdamW learning rate of the LoRA weights.
        adam_weight_decay: AdamW weight decay of the LoRA weights.
        max_grad_norm: Gradient-norm clip of each policy step.
        clip_mode: ``"ppo"`` (max(−Aρ, −A·clip(ρ))) or ``"dpok_clamp"`` (official −A·clamp(ρ)).
        clip_range: ε of the ratio clip [1−ε, 1+ε] (official 1e-4 is for SD's 16 384-element latents).
        train_step_window: ``[start, stop]`` as fractions of the schedule (0 = the first, noisiest step):
            steps ``ceil(start·T)`` to ``ceil(stop·T) − 1`` enter the buffer and train the policy
            ([0, f] is DDPO's ``timestep_fraction`` f); [0, 1] = all.
        step_weighting: ``"none"``, or ``"equalise"``: each transition's surrogate is multiplied by
            mean_s(|c_s|/σ_s) / (|c_t|/σ_t), so every step's policy-gradient term has the same scale.
            Without it, SD's last step (|c_t|/σ_t ≈ 5 against ≈ 1) owns most of the gradient although the
            layout is decided in the first steps (``dpok.rl.sampling.policy_gradient_scale``).
        buffer_size: FIFO buffer capacity in transitions.
        p_batch: Transitions per policy micro-batch.
        accum: Micro-batches accumulated per policy step.
        p_step: Policy steps per round.
    """

    KEY_PATH: ClassVar[str] = f"{KEY_PATH}.policy"

    objective: str
    nft_strength: float
    nft_advantage_clip: float
    learning_rate: float
    adam_weight_decay: float
    max_grad_norm: float
    clip_mode: str
    clip_range: float
    train_step_window: tuple[float, float]
    step_weighting: str
    buffer_size: int
    p_batch: int
    accum: int
    p_step: int

    def __post_init__(self) -> None:
        self.choice("objective", POLICY_OBJECTIVES)
        self.number("nft_strength", gt=0)
        self.number("nft_advantage_clip", gt=0)
        self.number("learning_rate", gt=0)
        self.number("adam_weight_decay", ge=0)
        self.number("max_grad_norm", gt=0)
        self.choice("clip_mode", CLIP_MODES)
        self.number("clip_range", gt=0, lt=1)
        window = self.train_step_window
        if (
            not isinstance(window, (list, tuple)) or len(window) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in window)
            or not 0 <= window[0] < window[1] <= 1
        ):
            self.fail("train_step_window", "[start, stop] with 0 <= start < stop <= 1")
        self.set("train_step_window", (float(window[0]), float(window[1])))
        self.choice("step_weighting", STEP_WEIGHTINGS)
        for name in ("buffer_size", "p_batch", "accum", "p_step"):
            self.integer(name, 1)
        if self.p_batch > self.buffer_size:
            self.fail("p_batch", f"<= {self.key('buffer_size')} ({self.buffer_size})")


@dataclass(frozen=True)
class KLConfig(Settings):
    """The KL regulariser to the pretrained model (``finetune.rl.kl``).

    Attributes:
        weight: β (0 disables the penalty and skips the reference forward pass).
        form: ``"exact"`` (Gaussian KL in nats) or ``"eps_mse"`` (official mean((ε̄_θ − ε̄_pre)²)).
    """

    KEY_PATH: ClassVar[str] = f"{KEY_PATH}.kl"

    weight: float
    form: str

    def __post_init__(self) -> None:
        self.number("weight", ge=0)
        self.choice("form", KL_FORMS)


@dataclass(frozen=True)
class RuntimeConfig(Settings):
    """How long a run is, where it keeps its state, and how it uses the machine (``finetune.rl.runtime``):
    the settings that may change between a checkpoint and the run resuming from it.

    Attributes:
        num_rounds: Rounds of sample → reward → value steps → policy steps.
        checkpoint_every: Write a checkpoint every this many rounds (and after the last round).
        keep_last_checkpoints: Checkpoints kept on disk; older ones are deleted.
        resume: Continue from the latest checkpoint in the checkpoint folder if there is one; False starts
            fresh and deletes the old checkpoints once the new run's first checkpoint is written.
        kl_report_trajectories: Fresh trajectories per round on which the exact KL bound is reported
            (0 skips the report; the metric is then NaN).
        sample_batch_size: Trajectories per sampler call (memory knob); null: ``g_batch`` / N processes
            (:meth:`sample_chunk`). Each trajectory has its own noise stream, so this does not change the samples.
        update_batch_size: Transitions per forward/backward pass of the value and policy steps (memory knob:
            gradients accumulate over the passes, the steps are the same); null: the whole micro-batch
            (with N processes: a share of it per process). A one-process run equals an N-process run to the
            last bit when both set sample_batch_size and update_batch_size to the N-process shares
            (docs/distributed.md).
        precision: What the diffusion model computes in (``dpok.rl.precision``, docs/throughput.md). ``"fp32"``:
            the pipeline's own dtype, no autocast. ``"bf16"``/``"fp16"``: its forward and backward passes
            (sampling, KL report, policy steps) in bfloat16/float16: on CUDA under ``torch.autocast``, fp16 with
            dynamic loss scaling (a step whose scaled gradient overflows is skipped and counted; the scale
            restarts on resume); on a CPU with the frozen weights held in that dtype during each phase (CPU
            autocast casts every weight again at every call). ``"auto"``: bf16 on a CPU with AMX, fp32 on other
            CPUs (with AVX512-BF16 alone bfloat16 measured slower on the shapes model); on CUDA the UNet's half
            dtype (bf16 where the GPU has it for a float32 UNet, else fp16). bf16 on a CPU with neither AMX nor
            AVX512-BF16 is refused at start-up. In every precision the LoRA weights and their AdamW state,
            log-probabilities, advantages, the KL and the value function are float32, and sampling and the
            update run the UNet on the same batch shapes, so that before an update the ratio is exactly 1.
        compile: ``torch.compile`` the UNet for sampling, the KL report and the policy steps: ``true``, ``false``
            or ``"auto"``, which does not compile (measured: minutes of compilation per graph on a CPU, and the
            inference and training graphs round differently, so the ratio is no longer exact;
            docs/throughput.md). ``true`` without a compiler (C++ on a CPU, Triton on a GPU) is refused at
            start-up.
        gradient_checkpointing: Recompute the UNet's activations in the backward pass of the policy
            steps instead of storing them: less memory, slower steps, the same gradients.
    """

    KEY_PATH: ClassVar[str] = f"{KEY_PATH}.runtime"

    num_rounds: int
    checkpoint_every: int
    keep_last_checkpoints: int
    resume: bool
    kl_report_trajectories: int
    sample_batch_size: int | None
    update_batch_size: int | None
    precision: str
    compile: bool | str
    gradient_checkpointing: bool

    def __post_init__(self) -> None:
        for name in ("num_rounds", "checkpoint_every", "keep_last_checkpoints"):
            self.integer(name, 1)
        self.boolean("resume")
        self.integer("kl_report_trajectories", 0)
        self.integer("sample_batch_size", 1, optional=True)
        self.integer("update_batch_size", 1, optional=True)
        self.choice("precision", PRECISIONS)
        if not (isinstance(self.compile, bool) or self.compile == "auto"):
            self.fail("compile", "true, false or auto")
        self.boolean("gradient_checkpointing")

    def sample_chunk(self, g_batch: int, world_size: int = 1) -> int:
        """Trajectories per sampler call (and per decode of the value features): ``sample_batch_size``, or
        one chunk per process."""
        return self.sample_batch_size or max(1, -(-g_batch // world_size))


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """Every setting of a DPOK run (``finetune.rl``, with the shared ``sampler``), built once by
    :meth:`from_params` and passed as this object.

    Attributes:
        seed: Seeds everything: prompt choice, sampling noise, minibatch draws, LoRA and value-net init.
        sampler: :class:`dpok.config.SamplerConfig`, the policy's sampler.
        rollout, lora, advantage, value, policy, kl, runtime: the groups (module docstring).
    """

    KEY_PATH: ClassVar[str] = KEY_PATH

    seed: int
    sampler: SamplerConfig
    rollout: RolloutConfig
    lora: LoraConfig
    advantage: AdvantageConfig
    value: ValueConfig
    policy: PolicyConfig
    kl: KLConfig
    runtime: RuntimeConfig

    def __post_init__(self) -> None:
        self.integer("seed", 0)
        if self.advantage.normalisation == "group" and self.rollout.trajectories_per_prompt < 2:
            fail_key = f"{RolloutConfig.KEY_PATH}.trajectories_per_prompt"
            raise ValueError(
                f"{fail_key} must be >= 2 with {AdvantageConfig.KEY_PATH}.normalisation: group (a group of one "
                f"has nothing to compare), got {self.rollout.trajectories_per_prompt!r}"
            )
        if self.policy.objective == "nft":
            key = f"{PolicyConfig.KEY_PATH}.objective"
            if self.value.enabled:
                raise ValueError(f"{key}: nft uses the group mean as its baseline, not V_φ: set "
                                 f"{ValueConfig.KEY_PATH}.enabled: false (or objective: clipped_ratio)")
            if self.advantage.normalisation == "none":
                raise ValueError(f"{key}: nft needs centred advantages (an image better or worse than its "
                                 f"prompt's others): set {AdvantageConfig.KEY_PATH}.normalisation to group or per_prompt")
        if self.value.batch_size > self.policy.buffer_size:
            raise ValueError(
                f"{ValueConfig.KEY_PATH}.batch_size must be <= {PolicyConfig.KEY_PATH}.buffer_size "
                f"({self.policy.buffer_size}), got {self.value.batch_size!r}"
            )

    @classmethod
    def from_params(cls, rl: Mapping[str, Any] | None, sampler: Mapping[str, Any] | SamplerConfig) -> FinetuneConfig:
        """Build from the ``finetune.rl`` and ``sampler`` parameters (conf/base merged with the environment);
        an unknown or missing key is an error naming its full path."""
        if not isinstance(sampler, SamplerConfig):
            sampler = from_mapping(SamplerConfig, sampler, SamplerConfig.KEY_PATH)
        return from_mapping(cls, rl, KEY_PATH, sampler=sampler)

    def resumable_dict(self) -> dict[str, Any]:
        """``to_dict()`` without the ``runtime`` group: what must match for a run to resume."""
        return {k: v for k, v in self.to_dict().items() if k != RESUMABLE_GROUP}

    def train_steps(self) -> tuple[int, int]:
        """The ``[first, stop)`` step indices of ``policy.train_step_window`` (at least one step)."""
        steps, window = self.sampler.num_inference_steps, self.policy.train_step_window
        start = min(steps - 1, math.ceil(window[0] * steps - 1e-9))
        stop = max(start + 1, math.ceil(window[1] * steps - 1e-9))
        return start, stop

    def sample_chunk(self, world_size: int = 1) -> int:
        """Trajectories per sampler call: :meth:`RuntimeConfig.sample_chunk` of ``g_batch``."""
        return self.runtime.sample_chunk(self.rollout.g_batch, world_size)


@dataclass(frozen=True)
class SFTConfig(Settings):
    """Settings of reward-weighted SFT (``finetune.sft``, :mod:`dpok.rl.sft`); the rest comes from
    ``finetune.rl``: seed, the sample budget (``runtime.num_rounds × rollout.g_batch``), prompts per draw,
    sampler, LoRA, the policy's learning rate, weight decay and gradient clipping, and precision.

    Attributes:
        kl_weight: γ, the weight of the supervised KL term (ε-MSE to the pretrained model); 0 is plain
            reward-weighted fine-tuning.
        steps: AdamW steps on the sample set.
        batch_size: Samples per step (drawn with replacement, each with its own t and ε).
        reward_offset: Added to every reward before it weights its sample; the weights must be ≥ 0, so a
            reward that can be negative (ImageReward) needs an offset.
        report_every: Steps between reports of the exact KL bound (``runtime.kl_report_trajectories`` fresh
            samples of the fine-tuned model); 0 reports only at the end.
    """

    KEY_PATH: ClassVar[str] = "finetune.sft"

    kl_weight: float
    steps: int
    batch_size: int
    reward_offset: float
    report_every: int

    def __post_init__(self) -> None:
        self.integer("steps", 1)
        self.integer("batch_size", 1)
        self.integer("report_every", 0)
        self.number("kl_weight", ge=0)
        self.number("reward_offset")



__all__ = [
    "AdvantageConfig", "FinetuneConfig", "KLConfig", "LoraConfig", "PolicyConfig", "RESUMABLE_GROUP",
    "RolloutConfig", "RuntimeConfig", "SFTConfig", "ValueConfig",
]
