"""``FinetuneConfig``: every hyperparameter of a DPOK run, named, documented and validated.

The defaults are conf/base/parameters_finetune.yml's ``finetune.rl`` (a test keeps them equal), tuned for the
shapes world's tiny base model (8×8×4 latents) on a CPU; the paper's values for Stable Diffusion v1.5
are in docs/algorithm.md §6 (``conf/sd15``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from collections.abc import Mapping
from typing import Any

from dpok.config import from_mapping

from dpok.rl.kl import KL_FORMS
from dpok.rl.losses import CLIP_MODES, NORMALISATION_SCALES, REWARD_NORMALISATIONS

SHAPES_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
)

KEY_PATH = "finetune.rl"  # where these settings live in the parameters, for error messages
MIXED_PRECISION_MODES = ("no", "fp16", "bf16")
STEP_WEIGHTINGS = ("none", "equalise")
VALUE_FEATURES = ("latent", "tweedie", "tweedie_reward")

# May differ between a checkpoint and the run resuming from it; any other change is refused on resume.
# mixed_precision and gradient_checkpointing are hardware knobs: a run may resume on another machine.
RESUMABLE_CHANGES = frozenset(
    {"num_rounds", "checkpoint_every", "keep_last_checkpoints", "resume", "kl_report_trajectories", "sample_batch_size",
     "update_batch_size", "mixed_precision", "gradient_checkpointing"}
)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class FinetuneConfig:
    """Parameters of DPOK fine-tuning (``parameters_finetune.yml``, key ``finetune.rl``).

    Attributes:
        seed: Seeds everything: prompt choice, sampling noise, minibatch draws, LoRA and value-net init.
        num_rounds: Rounds of sample → reward → value steps → policy steps.
        g_batch: Trajectories sampled per round (prompts drawn uniformly, with replacement).
        trajectories_per_prompt: Trajectories per drawn prompt in a round, a *group* (g_batch / this many
            prompts are drawn). Above 1, each prompt's rewards can be compared within the round
            (``reward_normalisation``), as DDPO's per-prompt statistics and GRPO's groups do.
        share_initial_noise: The trajectories of a group start from the same x_T (DanceGRPO), so their
            rewards differ only by the policy's own choices along the way.
        sample_batch_size: Trajectories per sampler call (memory knob); None samples all g_batch at once
            (with N processes: g_batch / N per process).
            Each trajectory has its own noise stream, so this does not change the samples.
        update_batch_size: Transitions per forward/backward pass of the value and policy steps (memory knob:
            gradients accumulate over the passes, the steps are the same); None: the whole micro-batch
            (with N processes: a share of p_batch / N per process). A one-process run equals an N-process
            run to the last bit when both set sample_batch_size and update_batch_size to the N-process
            shares (docs/distributed.md).
        num_inference_steps: DDIM steps T per trajectory.
        guidance_scale: CFG weight w (CFG is off for w <= 1).
        eta: DDIM η; must be in (0, 1] so every step is a Gaussian with a density.
        lora_rank: LoRA rank r.
        lora_alpha: LoRA α (the update is scaled by α/r).
        lora_target_modules: UNet module names LoRA attaches to. The default reaches the ResNet
            convolutions and feed-forward layers: attention-only LoRA learned nothing on the tiny model
            (docs/shapes_world.md).
        learning_rate: AdamW learning rate of the LoRA weights.
        adam_weight_decay: AdamW weight decay of the LoRA weights.
        max_grad_norm: Gradient-norm clip of each policy step.
        reward_weight: α, the advantage's scale A = α·(r − V).
        kl_weight: β, weight of the KL penalty (0 disables it and skips the reference forward pass).
        kl_form: ``"exact"`` (Gaussian KL in nats) or ``"eps_mse"`` (official mean((ε̄_θ − ε̄_pre)²)).
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
        use_value_function: Learn V_φ and use A = α·(r − V); otherwise A = α·r. V is evaluated on a
            transition when it enters the buffer, before V_φ is fitted on its reward (see the trainer).
        value_features: What V_φ sees besides the prompt and step: ``"latent"`` (x_t, the paper),
            ``"tweedie"`` (x_t and Tweedie's x̂_0), ``"tweedie_reward"`` (those and the reward of the image
            decoded from x̂_0, standardised like the final reward; one extra decode and reward call per
            trained transition).
        value_shrinkage: Use λ_t·V_φ as the baseline, λ_t ∈ [0, 1] the least-squares multiple of V_φ's
            out-of-sample predictions at step t over recent rounds (``dpok.rl.value``): V_φ adds no variance
            at steps where it does not predict the reward.
        value_learning_rate: AdamW learning rate of the value function.
        value_batch_size: Transitions per value step.
        value_steps: Value steps per round (before the policy steps).
        reward_normalisation: How rewards are standardised before the advantage: ``"none"`` (the paper),
            ``"per_prompt"`` (DDPO: each prompt's last ``per_prompt_window`` rewards) or ``"group"``
            (GRPO: the round's trajectories of the same prompt draw; a group whose rewards are all equal
            teaches nothing and is left out of the buffer).
        per_prompt_window: Rewards remembered per prompt for the ``per_prompt`` standardisation.
        per_prompt_min_count: Below this many rewards a prompt uses the batch's statistics.
        per_prompt_scale: What the centred reward is divided by: ``"prompt"``, the prompt's (or group's)
            own std (DDPO, GRPO), or ``"pooled"``, the std of all prompts' remembered (or the round's
            group-centred) rewards, so that nearly solved prompts (tiny std) do not get huge advantages
            for one unlucky sample.
        kl_report_trajectories: Fresh trajectories per round on which the exact KL bound is reported
            (0 skips the report; the metric is then NaN).
        checkpoint_every: Write a checkpoint every this many rounds (and after the last round).
        keep_last_checkpoints: Checkpoints kept on disk; older ones are deleted.
        resume: Continue from the latest checkpoint in the checkpoint folder if there is one; False starts
            fresh and deletes the old checkpoints once the new run's first checkpoint is written.
        mixed_precision: ``"no"`` runs the UNet, VAE and text encoder in the pipeline's own dtype;
            ``"fp16"``/``"bf16"`` run their forward passes (sampling, KL report, policy steps) under
            ``torch.autocast`` in float16/bfloat16, fp16 with dynamic loss scaling (a step whose scaled
            gradient overflows is skipped and counted; the scale restarts on resume). In every mode the
            LoRA weights and their AdamW state are float32, and the value function runs in float32.
        gradient_checkpointing: Recompute the UNet's activations in the backward pass of the policy
            steps instead of storing them: less memory, slower steps, the same gradients.
    """

    seed: int = 0
    num_rounds: int = 54
    g_batch: int = 16
    trajectories_per_prompt: int = 4
    share_initial_noise: bool = True
    sample_batch_size: int | None = None
    update_batch_size: int | None = None
    num_inference_steps: int = 20
    guidance_scale: float = 3.0
    eta: float = 1.0
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_target_modules: tuple[str, ...] = field(default=SHAPES_LORA_TARGETS)
    learning_rate: float = 1e-3
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    reward_weight: float = 1.0
    kl_weight: float = 0.01
    kl_form: str = "eps_mse"
    clip_mode: str = "ppo"
    clip_range: float = 1e-2
    train_step_window: tuple[float, float] = (0.0, 1.0)
    step_weighting: str = "equalise"
    buffer_size: int = 1000
    p_batch: int = 32
    accum: int = 2
    p_step: int = 4
    use_value_function: bool = True
    value_learning_rate: float = 1e-3
    value_batch_size: int = 128
    value_steps: int = 5
    value_features: str = "tweedie_reward"
    value_shrinkage: bool = True
    reward_normalisation: str = "group"
    per_prompt_window: int = 32
    per_prompt_min_count: int = 4
    per_prompt_scale: str = "pooled"
    kl_report_trajectories: int = 2
    checkpoint_every: int = 10
    keep_last_checkpoints: int = 2
    resume: bool = True
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        def fail(name: str, requirement: str) -> None:
            value = getattr(self, name)
            hint = ""
            if isinstance(value, str) and _looks_numeric(value):
                hint = " (YAML 1.1 reads a number such as 1e-3 without a dot as text: write 1.0e-3)"
            raise ValueError(f"{KEY_PATH}.{name} must be {requirement}, got {value!r}{hint}")

        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                fail(name, f"an integer >= {minimum}")

        def number(name: str, *, gt: float | None = None, ge: float | None = None, le: float | None = None,
                   lt: float | None = None) -> None:
            value = getattr(self, name)
            bounds = [(gt, ">", lambda v, b: v > b), (ge, ">=", lambda v, b: v >= b),
                      (le, "<=", lambda v, b: v <= b), (lt, "<", lambda v, b: v < b)]
            requirement = " and ".join(f"{op} {b}" for b, op, _ in bounds if b is not None)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                fail(name, f"a number {requirement}")
            if not all(ok(value, b) for b, _, ok in bounds if b is not None):
                fail(name, requirement)

        def boolean(name: str) -> None:
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")

        integer("seed", 0)
        for name in ("num_rounds", "g_batch", "num_inference_steps", "lora_rank", "buffer_size", "p_batch",
                     "accum", "p_step", "value_batch_size", "checkpoint_every", "keep_last_checkpoints",
                     "trajectories_per_prompt"):
            integer(name, 1)
        if self.g_batch % self.trajectories_per_prompt:
            fail("trajectories_per_prompt", f"a divisor of {KEY_PATH}.g_batch ({self.g_batch})")
        for name in ("value_steps", "kl_report_trajectories"):
            integer(name, 0)
        if self.sample_batch_size is not None:
            integer("sample_batch_size", 1)
        if self.update_batch_size is not None:
            integer("update_batch_size", 1)
        number("guidance_scale", ge=0)
        number("eta", gt=0, le=1)
        number("lora_alpha", gt=0)
        number("learning_rate", gt=0)
        number("adam_weight_decay", ge=0)
        number("max_grad_norm", gt=0)
        number("reward_weight", gt=0)
        number("kl_weight", ge=0)
        number("clip_range", gt=0, lt=1)
        window = self.train_step_window
        if (
            not isinstance(window, (list, tuple)) or len(window) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in window)
            or not 0 <= window[0] < window[1] <= 1
        ):
            fail("train_step_window", "[start, stop] with 0 <= start < stop <= 1")
        object.__setattr__(self, "train_step_window", (float(window[0]), float(window[1])))
        number("value_learning_rate", gt=0)
        for name in ("use_value_function", "value_shrinkage", "share_initial_noise", "resume",
                     "gradient_checkpointing"):
            boolean(name)
        if self.mixed_precision is False:
            # YAML 1.1 reads an unquoted `no` as false, and tools that rewrite parameter files (`dvc exp
            # run -S`) drop the quotes, so false means "no" here.
            object.__setattr__(self, "mixed_precision", "no")
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            fail("mixed_precision", f"one of {list(MIXED_PRECISION_MODES)}")

        targets = self.lora_target_modules
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
            fail("lora_target_modules", "a non-empty list of module names")
        object.__setattr__(self, "lora_target_modules", tuple(targets))
        if self.kl_form not in KL_FORMS:
            fail("kl_form", f"one of {list(KL_FORMS)}")
        if self.clip_mode not in CLIP_MODES:
            fail("clip_mode", f"one of {list(CLIP_MODES)}")
        for name, choices in (("step_weighting", STEP_WEIGHTINGS), ("value_features", VALUE_FEATURES),
                              ("reward_normalisation", REWARD_NORMALISATIONS)):
            if getattr(self, name) not in choices:
                fail(name, f"one of {list(choices)}")
        if self.reward_normalisation == "group" and self.trajectories_per_prompt < 2:
            fail("trajectories_per_prompt", ">= 2 with reward_normalisation: group (a group of one has nothing to "
                 "compare)")
        if self.per_prompt_scale not in NORMALISATION_SCALES:
            fail("per_prompt_scale", f"one of {list(NORMALISATION_SCALES)}")
        if self.p_batch > self.buffer_size:
            fail("p_batch", f"<= {KEY_PATH}.buffer_size ({self.buffer_size})")
        if self.value_batch_size > self.buffer_size:
            fail("value_batch_size", f"<= {KEY_PATH}.buffer_size ({self.buffer_size})")
        integer("per_prompt_window", 2)
        integer("per_prompt_min_count", 2)
        if self.per_prompt_min_count > self.per_prompt_window:
            fail("per_prompt_min_count", f"<= {KEY_PATH}.per_prompt_window ({self.per_prompt_window})")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> FinetuneConfig:
        """Build from the ``finetune.rl`` parameters; an unknown key is an error naming its full path."""
        return from_mapping(cls, params, KEY_PATH)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (the target modules as a list)."""
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        data["train_step_window"] = list(self.train_step_window)
        return data

    def train_steps(self) -> tuple[int, int]:
        """The ``[first, stop)`` step indices of ``train_step_window`` (at least one step)."""
        steps = self.num_inference_steps
        start = min(steps - 1, math.ceil(self.train_step_window[0] * steps - 1e-9))
        stop = max(start + 1, math.ceil(self.train_step_window[1] * steps - 1e-9))
        return start, stop
