"""The run state (docs/algorithm.md §4): the LoRA, optimisers, loss scaler, V_φ, reward statistics, buffer
and history, everything a round changes, in one :class:`RunState`, which a checkpoint captures and restores
exactly; and whether a checkpoint may be resumed under the current settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dpok.config import flatten
from dpok.models.lora import attach_lora, load_lora_state_dict, lora_state_dict
from dpok.rl.baseline import value_feature_size
from dpok.rl.buffer import TransitionBuffer
from dpok.rl.checkpoint import TrainingState, capture_rng_state, checkpoint_round, restore_rng_state
from dpok.rl.config import RESUMABLE_GROUP, FinetuneConfig
from dpok.rl.losses import PerPromptRewardNormaliser
from dpok.rl.precision import resolve_precision
from dpok.rl.rollout import LORA_INIT_STREAM, VALUE_INIT_STREAM, stream_seed
from dpok.rl.value import ValueFunction


@dataclass
class RunState:
    """Everything a run changes as it trains, in one place: what a checkpoint captures and restores.

    Attributes:
        lora_params: The trainable LoRA weights (float32) of the UNet's adapter.
        optimizer: AdamW over ``lora_params``.
        scaler: fp16 loss scaler (disabled, a pass-through, unless ``runtime.precision`` resolves to fp16).
        buffer: The FIFO transition buffer.
        value_fn: V_φ, or None without a value function.
        value_optimizer: AdamW over V_φ, or None.
        normaliser: Per-prompt reward statistics (``reward_normalisation: per_prompt``), or None.
        history: One metrics dict per finished round.
        reward_log: ``[round, prompt, reward]`` of every sampled trajectory (for per-prompt curves).
        probe_log: One row per benchmark probe (``round`` and the probe's metrics; dpok.evaluation.probe).
    """

    lora_params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    buffer: TransitionBuffer
    value_fn: ValueFunction | None
    value_optimizer: torch.optim.Optimizer | None
    normaliser: PerPromptRewardNormaliser | None
    history: list[dict[str, float]]
    reward_log: list[list[Any]]
    probe_log: list[dict[str, Any]]

    @property
    def round(self) -> int:
        return len(self.history)

    @classmethod
    def create(cls, unet: torch.nn.Module, config: FinetuneConfig) -> RunState:
        """Attach a fresh LoRA to ``unet`` and build the optimisers, V_φ, normaliser and buffer."""
        device = unet.device
        lora_params = attach_trainable_lora(unet, config)
        value_fn = value_optimizer = None
        if config.value.enabled:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(stream_seed(config.seed, VALUE_INIT_STREAM))
                latent_shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
                value_fn = ValueFunction(
                    latent_shape, unet.config.cross_attention_dim, config.sampler.num_inference_steps,
                    extra_dim=value_feature_size(config, latent_shape),
                    has_score=config.value.features == "tweedie_reward",
                ).to(device)
            value_optimizer = torch.optim.AdamW(value_fn.parameters(), lr=config.value.learning_rate)
        normaliser = None
        if config.advantage.normalisation == "per_prompt":
            normaliser = PerPromptRewardNormaliser(
                config.advantage.per_prompt_window, config.advantage.per_prompt_min_count, scale=config.advantage.per_prompt_scale
            )
        return cls(
            lora_params=lora_params,
            optimizer=torch.optim.AdamW(lora_params, lr=config.policy.learning_rate, weight_decay=config.policy.adam_weight_decay),
            # Dynamic loss scaling for fp16 only; disabled, its calls are the plain ones (scale(x) is x).
            scaler=torch.amp.GradScaler(device.type, enabled=resolve_precision(config.runtime, device, unet.dtype).loss_scaling),
            buffer=TransitionBuffer(config.policy.buffer_size),
            value_fn=value_fn,
            value_optimizer=value_optimizer,
            normaliser=normaliser,
            history=[],
            reward_log=[],
            probe_log=[],
        )

    def capture(self, unet: torch.nn.Module, config: FinetuneConfig) -> TrainingState:
        """The checkpoint of the state after round :attr:`round`."""
        return TrainingState(
            round=self.round,
            lora={k: v.cpu().contiguous() for k, v in lora_state_dict(unet).items()},
            policy_optimizer=self.optimizer.state_dict(),
            buffer=self.buffer.state_dict(),
            history=list(self.history),
            config=config.to_dict(),
            rng=capture_rng_state(),
            value_function=None if self.value_fn is None else {
                k: v.detach().cpu().contiguous() for k, v in self.value_fn.state_dict().items()
            },
            value_optimizer=None if self.value_optimizer is None else self.value_optimizer.state_dict(),
            reward_normaliser=None if self.normaliser is None else self.normaliser.state_dict(),
            reward_log=[list(row) for row in self.reward_log],
            probe_log=[dict(row) for row in self.probe_log],
        )

    def restore(self, state: TrainingState, unet: torch.nn.Module) -> None:
        """Continue from ``state`` (written by :meth:`capture` under the same settings)."""
        load_lora_state_dict(unet, {k: v.to(unet.device) for k, v in state.lora.items()})
        self.optimizer.load_state_dict(state.policy_optimizer)
        if self.value_fn is not None:
            self.value_fn.load_state_dict(state.value_function)
            self.value_optimizer.load_state_dict(state.value_optimizer)
        if self.normaliser is not None:
            self.normaliser.load_state_dict(state.reward_normaliser)
        self.buffer.load_state_dict(state.buffer)
        restore_rng_state(state.rng)
        self.history = list(state.history)
        self.reward_log = [list(row) for row in state.reward_log or []]
        self.probe_log = [dict(row) for row in state.probe_log or []]


def attach_trainable_lora(unet: torch.nn.Module, config: FinetuneConfig) -> list[torch.nn.Parameter]:
    """A fresh LoRA adapter on ``unet``, initialised from the run's seed; its float32 trainable weights."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(stream_seed(config.seed, LORA_INIT_STREAM))
        lora_params = attach_lora(unet, config.lora.rank, config.lora.alpha, config.lora.target_modules)
    # The adapter trains in float32 whatever the UNet's dtype: float16 weights would round away updates
    # of lr 1e-5, and the fp16 loss scaler cannot unscale float16 gradients. peft casts at its edges.
    for parameter in lora_params:
        if parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return lora_params


def check_resumable(saved: dict[str, Any], config: FinetuneConfig, path: Path) -> None:
    """Refuse to resume from the checkpoint at ``path`` (its settings ``saved``) under other settings than
    the ``runtime`` group's (:data:`~dpok.rl.config.RESUMABLE_GROUP`), or past ``runtime.num_rounds``."""
    resumable = f"{RESUMABLE_GROUP}."
    saved = {k: v for k, v in flatten(saved).items() if not k.startswith(resumable)}
    current = flatten(config.resumable_dict())
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"finetune.rl.{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume from '{path}': it was written with different settings ({details}). "
            "Restore them, or set finetune.rl.runtime.resume=false to start a fresh run in this folder"
        )
    if checkpoint_round(path) > config.runtime.num_rounds:
        raise ValueError(
            f"cannot resume from '{path}': it is past finetune.rl.runtime.num_rounds={config.runtime.num_rounds}; "
            "raise num_rounds or set finetune.rl.runtime.resume=false"
        )


__all__ = ["RunState", "attach_trainable_lora", "check_resumable"]
