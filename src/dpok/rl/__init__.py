"""DPOK (Fan et al., NeurIPS 2023) as a library: one concept per module, reading like docs/algorithm.md.

- :mod:`~dpok.rl.sampling`: the DDIM η step with its log-probability, trajectories (§2)
- :mod:`~dpok.rl.kl`: the per-step KL and its bound, the adapter-disabled reference model (§3)
- :mod:`~dpok.rl.value`: the value function V_φ(x_t, t, z) (§4)
- :mod:`~dpok.rl.losses`: advantages, clipped surrogates, per-prompt reward normalisation (§4)
- :mod:`~dpok.rl.buffer`: the FIFO transition buffer (§4)
- :mod:`~dpok.rl.config`: ``FinetuneConfig`` (grouped by phase) and ``SFTConfig``
- :mod:`~dpok.rl.checkpoint`: atomic checkpoints, resume
- :mod:`~dpok.rl.context`: the checks of a run's inputs, ``RoundContext``: what every phase of a round reads
- :mod:`~dpok.rl.rollout`: a round's random streams, prompts, trajectories and rewards (§4, steps 1–2)
- :mod:`~dpok.rl.baseline`: standardised rewards, V_φ's baselines, the value steps, variance ratios (§4, steps 3–4)
- :mod:`~dpok.rl.update`: the policy steps and the KL report (§4, step 5)
- :mod:`~dpok.rl.state`: ``RunState``, everything a run changes, as a checkpoint holds it
- :mod:`~dpok.rl.trainer`: ``train_dpok``, the rounds
- :mod:`~dpok.rl.sft`: ``train_sft``, reward-weighted supervised fine-tuning, the paper's baseline (§8)

No Kedro and no reward model here: a reward is a callable ``reward_fn(images_uint8_NHWC, prompts)``.
"""

from dpok.rl.baseline import value_variance_ratio, variance_ratio_by_step
from dpok.rl.buffer import TransitionBatch, TransitionBuffer
from dpok.rl.checkpoint import TrainingState, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from dpok.rl.config import (
    AdvantageConfig,
    FinetuneConfig,
    KLConfig,
    LoraConfig,
    PolicyConfig,
    RolloutConfig,
    RuntimeConfig,
    SFTConfig,
    ValueConfig,
)
from dpok.rl.context import RoundContext
from dpok.rl.kl import KL_FORMS, eps_mse, gaussian_kl, reference_model, step_kl, trajectory_kl_bound
from dpok.rl.losses import (
    CLIP_MODES,
    PerPromptRewardNormaliser,
    advantages,
    policy_loss,
    policy_loss_dpok_clamp,
    policy_loss_ppo,
)
from dpok.rl.sampling import (
    Trajectory,
    ddim_step_mean_std,
    ddim_step_with_logprob,
    gaussian_log_prob,
    guided_noise_prediction,
    sample_trajectories,
    validate_scheduler_for_logprob,
)
from dpok.rl.sft import SFT_METRIC_NAMES, SFTResult, sft_loss, train_sft
from dpok.rl.state import RunState, attach_trainable_lora
from dpok.rl.trainer import METRIC_NAMES, TrainingResult, train_dpok
from dpok.rl.update import step_weights
from dpok.rl.value import ValueFunction, prompt_text_feature, value_loss, value_update

__all__ = [
    "CLIP_MODES",
    "KL_FORMS",
    "METRIC_NAMES",
    "SFT_METRIC_NAMES",
    "AdvantageConfig",
    "KLConfig",
    "LoraConfig",
    "PolicyConfig",
    "RolloutConfig",
    "RuntimeConfig",
    "ValueConfig",
    "SFTConfig",
    "SFTResult",
    "FinetuneConfig",
    "PerPromptRewardNormaliser",
    "RoundContext",
    "RunState",
    "TrainingResult",
    "TrainingState",
    "Trajectory",
    "TransitionBatch",
    "TransitionBuffer",
    "ValueFunction",
    "advantages",
    "attach_trainable_lora",
    "ddim_step_mean_std",
    "ddim_step_with_logprob",
    "eps_mse",
    "gaussian_kl",
    "gaussian_log_prob",
    "guided_noise_prediction",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "policy_loss",
    "policy_loss_dpok_clamp",
    "policy_loss_ppo",
    "prompt_text_feature",
    "reference_model",
    "sample_trajectories",
    "save_checkpoint",
    "sft_loss",
    "step_kl",
    "step_weights",
    "train_dpok",
    "train_sft",
    "trajectory_kl_bound",
    "validate_scheduler_for_logprob",
    "value_loss",
    "value_update",
    "value_variance_ratio",
    "variance_ratio_by_step",
]
