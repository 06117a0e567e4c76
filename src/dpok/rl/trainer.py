"""The DPOK training loop (docs/algorithm.md §4): rounds of sample → reward → buffer → value steps → policy steps.

One round, :func:`_train_round`, reads as the algorithm: draw prompts and sample their trajectories with
the current policy; score them; standardise the rewards and push the trained steps' transitions into the
buffer, each with the baseline V_φ predicts for it; fit V_φ; take the policy steps. Everything a round
changes lives in one :class:`RunState`, which is what a checkpoint captures and restores.

Randomness: every random draw of round ``k`` comes from generators seeded by ``(seed, k, stream)``
(prompt choice, each trajectory's noise, value minibatches, policy minibatches), and the LoRA and value
net are initialised from ``(seed, stream)``. A round therefore depends only on the state at its start
(LoRA, optimisers, value net, buffer, reward statistics), which the checkpoint holds, so a resumed run
repeats the uninterrupted run exactly. The global RNG states are saved and restored too, for a reward
function that uses them.

The policy and the reference model are the same UNet: the reference is the UNet with its LoRA adapter
disabled. The UNet stays in eval mode (no dropout), only the LoRA weights train.

Precision: ``config.mixed_precision`` autocasts the diffusion model's forward passes only (sampling, the
KL report, the policy steps; fp16 adds loss scaling); the LoRA weights and their optimiser, the value
function and the reward stay float32, whatever the pipeline's dtype.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from dpok.models.lora import ADAPTER_NAME, attach_lora, load_lora_state_dict, lora_state_dict
from dpok.rl.buffer import TransitionBatch, TransitionBuffer
from dpok.rl.checkpoint import (
    TrainingState,
    capture_rng_state,
    checkpoint_round,
    clean_partial_checkpoints,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from dpok.rl.config import RESUMABLE_CHANGES, FinetuneConfig
from dpok.rl.distributed import Ranks
from dpok.rl.kl import reference_model, step_kl, trajectory_kl_bound
from dpok.rl.losses import PerPromptRewardNormaliser, advantages, group_statistics, policy_loss
from dpok.rl.sampling import (
    Trajectory,
    ddim_step_with_logprob,
    decode_latents,
    guided_noise_prediction,
    policy_gradient_scale,
    predicted_original_sample,
    sample_trajectories,
    validate_scheduler_for_logprob,
)
from dpok.rl.value import ValueFunction, prompt_text_feature, value_loss

logger = logging.getLogger(__name__)

RewardFn = Callable[[np.ndarray, list[str]], np.ndarray]

METRIC_NAMES = (
    "round",
    "reward_mean",
    "reward_std",
    "reward_min",
    "reward_max",
    "kl_bound_nats",
    "kl_penalty",
    "policy_loss",
    "value_loss",
    "ratio_dev",
    "clip_fraction",
    "grad_norm",
    "skipped_steps",
    "value_variance_ratio",
    "baseline_variance_ratio",
    "uniform_groups",
    "seconds_sampling",
    "seconds_reward",
    "seconds_kl_report",
    "seconds_buffer",
    "seconds_value",
    "seconds_policy",
)
"""Keys of each round's metrics. ``kl_bound_nats``: exact KL bound (nats, summed over steps and latent
elements) averaged over this round's first ``kl_report_trajectories`` fresh trajectories;
``kl_penalty``: the optimised KL term (``kl_form``, before β) averaged over micro-batches;
``policy_loss``: the clipped surrogate without the KL term; ``grad_norm``: LoRA gradient norm before
clipping; ``skipped_steps``: policy steps dropped for a non-finite loss or gradient;
``value_variance_ratio``: Var(r − V)/Var(r) of this round's fresh transitions before V_φ is fitted on them
(V the baseline the policy uses: λ_t·V_φ with ``value_shrinkage``), per step and averaged over steps (below 1: the baseline removes variance; NaN without a value function);
``baseline_variance_ratio``: the same for the whole baseline on the raw reward, Var(r − (m + s·V))/Var(r),
where m and s standardise the reward (``reward_normalisation``): what the group or prompt mean and V_φ
remove together;
``uniform_groups``: groups (``reward_normalisation: group``) left out because all their rewards were equal."""

# Random streams of a round (see module docstring).
_PROMPTS, _SAMPLING, _VALUE, _POLICY, _LORA_INIT, _VALUE_INIT, _INITIAL_NOISE = range(7)

# Weight of a round's out-of-sample value predictions in λ_t a round later (``value_shrinkage``): the
# last five rounds (≈ 80 trajectories a step with the defaults) carry two thirds of it.
SHRINKAGE_DECAY = 0.8

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast(config: FinetuneConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for the diffusion model's forward passes (``config.mixed_precision``); a no-op for "no"."""
    if config.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[config.mixed_precision])


@dataclass
class TrainingResult:
    """What :func:`train_dpok` returns.

    Attributes:
        history: One metrics dict (keys :data:`METRIC_NAMES`) per round, including resumed rounds.
        lora_state: Final LoRA weights on the CPU (peft names; ``dpok.models.save_lora`` writes the
            diffusers file from the UNet, which still carries the adapter).
        config: The configuration of the run.
        checkpoint_dir: Where checkpoints were written.
        last_checkpoint: The checkpoint of the final round.
        resumed_from: The checkpoint the run continued from, or None for a fresh run.
        reward_log: ``[round, prompt, reward]`` of every trajectory sampled, resumed rounds included.
        value_variance_by_step: ``{step index: Var(r − V)/Var(r)}`` (0 = the noisiest step) over the final
            buffer's transitions (the last rounds'), V the baseline each got when it entered the buffer,
            before V_φ was fitted on it; empty without a value function.
    """

    history: list[dict[str, float]]
    lora_state: dict[str, torch.Tensor]
    config: FinetuneConfig
    checkpoint_dir: Path
    last_checkpoint: Path | None
    resumed_from: Path | None
    reward_log: list[list[Any]]
    value_variance_by_step: dict[int, float] = field(default_factory=dict)

    @property
    def skipped_steps(self) -> int:
        return int(sum(row["skipped_steps"] for row in self.history))


def _seed(seed: int, *key: int) -> int:
    """A 64-bit seed derived from ``(seed, *key)``: independent, reproducible streams."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=key).generate_state(1, dtype=np.uint64)[0])


def _generator(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *key))


def _check_inputs(pipeline, prompts: Sequence[str], config: FinetuneConfig) -> list[str]:
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of prompt strings")
    prompts = list(prompts)
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"prompts must be non-empty strings, got {bad[:3]}")
    validate_scheduler_for_logprob(pipeline.scheduler, config.num_inference_steps, config.eta)
    if ADAPTER_NAME in (getattr(pipeline.unet, "peft_config", None) or {}):
        raise ValueError(
            f"the pipeline's UNet already has a '{ADAPTER_NAME}' LoRA adapter; pass a pipeline without it "
            "(to continue a run, resume from its checkpoint folder)"
        )
    return prompts


def _check_resumable(saved: dict[str, Any], config: FinetuneConfig, path: Path) -> None:
    current = config.to_dict()
    changed = sorted(
        k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        details = ", ".join(f"finetune.rl.{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume from '{path}': it was written with different settings ({details}). "
            "Restore them, or set finetune.rl.resume=false to start a fresh run in this folder"
        )
    if checkpoint_round(path) > config.num_rounds:
        raise ValueError(
            f"cannot resume from '{path}': it is past finetune.rl.num_rounds={config.num_rounds}; raise num_rounds "
            "or set finetune.rl.resume=false"
        )


def _score(reward_fn: RewardFn, images: np.ndarray, prompts: list[str], round_number: int) -> np.ndarray:
    raw = reward_fn(images, list(prompts))
    rewards = np.asarray(raw, dtype=np.float64)
    if rewards.shape != (len(prompts),):
        raise ValueError(
            f"reward_fn returned an array of shape {rewards.shape} for {len(prompts)} images in round "
            f"{round_number}; it must return one reward per image, shape ({len(prompts)},)"
        )
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"reward_fn returned a non-finite reward ({rewards[i]}) for prompt {prompts[i]!r} (image {i} of "
            f"round {round_number}; {bad.size} of {len(prompts)} non-finite). Rewards must be finite numbers"
        )
    return rewards


def _score_shared(
    reward_fn: RewardFn, images: np.ndarray, prompts: list[str], round_number: int, ranks: Ranks
) -> np.ndarray:
    """:func:`_score` with each rank scoring its chunk of the images; every rank gets all rewards."""
    local = [_score(reward_fn, images[chunk.start : chunk.stop], prompts[chunk.start : chunk.stop], round_number)
             for chunk in ranks.chunks(len(prompts))]
    return np.concatenate(ranks.gather(local))


@dataclass
class RunState:
    """Everything a run changes as it trains, in one place: what a checkpoint captures and restores.

    Attributes:
        lora_params: The trainable LoRA weights (float32) of the UNet's adapter.
        optimizer: AdamW over ``lora_params``.
        scaler: fp16 loss scaler (disabled, a pass-through, unless ``mixed_precision`` is fp16).
        buffer: The FIFO transition buffer.
        value_fn: V_φ, or None without a value function.
        value_optimizer: AdamW over V_φ, or None.
        normaliser: Per-prompt reward statistics (``reward_normalisation: per_prompt``), or None.
        history: One metrics dict per finished round.
        reward_log: ``[round, prompt, reward]`` of every sampled trajectory (for per-prompt curves).
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

    @property
    def round(self) -> int:
        return len(self.history)

    @classmethod
    def create(cls, unet: torch.nn.Module, config: FinetuneConfig) -> RunState:
        """Attach a fresh LoRA to ``unet`` and build the optimisers, V_φ, normaliser and buffer."""
        device = unet.device
        lora_params = attach_trainable_lora(unet, config)
        value_fn = value_optimizer = None
        if config.use_value_function:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(_seed(config.seed, _VALUE_INIT))
                latent_shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
                value_fn = ValueFunction(
                    latent_shape, unet.config.cross_attention_dim, config.num_inference_steps,
                    extra_dim=_value_feature_size(config, latent_shape),
                    has_score=config.value_features == "tweedie_reward",
                ).to(device)
            value_optimizer = torch.optim.AdamW(value_fn.parameters(), lr=config.value_learning_rate)
        normaliser = None
        if config.reward_normalisation == "per_prompt":
            normaliser = PerPromptRewardNormaliser(
                config.per_prompt_window, config.per_prompt_min_count, scale=config.per_prompt_scale
            )
        return cls(
            lora_params=lora_params,
            optimizer=torch.optim.AdamW(lora_params, lr=config.learning_rate, weight_decay=config.adam_weight_decay),
            # Dynamic loss scaling for fp16 only; disabled, its calls are the plain ones (scale(x) is x).
            scaler=torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16"),
            buffer=TransitionBuffer(config.buffer_size),
            value_fn=value_fn,
            value_optimizer=value_optimizer,
            normaliser=normaliser,
            history=[],
            reward_log=[],
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


def attach_trainable_lora(unet: torch.nn.Module, config: FinetuneConfig) -> list[torch.nn.Parameter]:
    """A fresh LoRA adapter on ``unet``, initialised from the run's seed; its float32 trainable weights."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(_seed(config.seed, _LORA_INIT))
        lora_params = attach_lora(unet, config.lora_rank, config.lora_alpha, config.lora_target_modules)
    # The adapter trains in float32 whatever the UNet's dtype: float16 weights would round away updates
    # of lr 1e-5, and the fp16 loss scaler cannot unscale float16 gradients. peft casts at its edges.
    for parameter in lora_params:
        if parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return lora_params


def _value_feature_size(config: FinetuneConfig, latent_shape: Sequence[int]) -> int:
    latent_size = int(np.prod(latent_shape))
    return {"latent": 0, "tweedie": latent_size, "tweedie_reward": latent_size + 1}[config.value_features]


def _draw_prompts(prompts: list[str], config: FinetuneConfig, round_number: int) -> tuple[list[str], list[int]]:
    """The round's prompts, ``trajectories_per_prompt`` in a row per draw, and each one's group index."""
    n_groups = config.g_batch // config.trajectories_per_prompt
    choice = torch.randint(len(prompts), (n_groups,), generator=_generator(config.seed, round_number, _PROMPTS))
    repeat = config.trajectories_per_prompt
    return [prompts[i] for i in choice.tolist() for _ in range(repeat)], [g for g in range(n_groups) for _ in range(repeat)]


def _initial_noise(unet, config: FinetuneConfig, round_number: int, groups: list[int]) -> torch.Tensor | None:
    """With ``share_initial_noise``, one x_T per group from its own stream; otherwise None (each trajectory
    draws x_T from its own sampling stream, as the stock pipeline does)."""
    if not config.share_initial_noise:
        return None
    size = unet.config.sample_size
    shape = (1, unet.config.in_channels, size, size)
    per_group = {
        g: randn_tensor(shape, generator=_generator(config.seed, round_number, _INITIAL_NOISE, g), dtype=torch.float32)
        for g in sorted(set(groups))
    }
    return torch.cat([per_group[g] for g in groups])


def _sample_round(
    pipeline, prompts: list[str], groups: list[int], config: FinetuneConfig, round_number: int,
    ranks: Ranks = Ranks(),
) -> Trajectory:
    """The round's trajectories in chunks of ``sample_batch_size``; each rank samples its chunks (trajectory
    i from stream i) and all get all."""
    initial = _initial_noise(pipeline.unet, config, round_number, groups)
    parts = [
        sample_trajectories(
            pipeline,
            prompts[chunk.start : chunk.stop],
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            eta=config.eta,
            generator=[_generator(config.seed, round_number, _SAMPLING, i) for i in chunk],
            latents=None if initial is None else initial[chunk.start : chunk.stop],
        )
        for chunk in ranks.chunks(len(prompts), config.sample_batch_size)
    ]
    if not ranks.distributed:
        return Trajectory.concatenate(parts)
    local = [Trajectory.concatenate(parts).to("cpu")] if parts else []
    return Trajectory.concatenate(ranks.gather(local)).to(pipeline.unet.device)


def _reward_statistics(
    run: RunState, config: FinetuneConfig, prompts: list[str], rewards: np.ndarray, groups: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trajectory: the mean and scale that standardise its reward, and whether it trains."""
    if config.reward_normalisation == "group":
        return group_statistics(groups, rewards, config.per_prompt_scale)
    keep = np.ones(len(rewards), dtype=bool)
    if run.normaliser is not None:
        return (*run.normaliser.statistics(prompts, rewards), keep)
    return np.zeros(len(rewards)), np.ones(len(rewards)), keep


def _value_features(
    pipeline, reward_fn: RewardFn, trajectory: Trajectory, means: np.ndarray, scales: np.ndarray,
    config: FinetuneConfig, chunk_size: int, round_number: int, ranks: Ranks,
) -> torch.Tensor | None:
    """The extra inputs of V_φ for every transition of ``trajectory`` (``value_features``), (B·T, F)."""
    if config.value_features == "latent":
        return None
    batch, steps = trajectory.batch_size, trajectory.num_steps
    shape = trajectory.latents.shape[2:]
    x_t = trajectory.latents[:, :-1].reshape(batch * steps, *shape)
    timesteps = trajectory.timesteps.repeat(batch)
    x0_hat = predicted_original_sample(
        pipeline.scheduler, trajectory.noise_preds.reshape(batch * steps, *shape), timesteps, x_t
    )
    features = [x0_hat.flatten(1).cpu()]
    if config.value_features == "tweedie_reward":
        prompts = [p for p in trajectory.prompts for _ in range(steps)]
        device = pipeline.unet.device
        local = [  # decoding and scoring x̂_0 is the costly part: shared between ranks
            _score(reward_fn, decode_latents(pipeline, x0_hat[chunk.start : chunk.stop].to(device)),
                   prompts[chunk.start : chunk.stop], round_number)
            for chunk in ranks.chunks(batch * steps, chunk_size)
        ]
        scores = np.concatenate(ranks.gather(local) if ranks.distributed else local)
        standardised = (scores - np.repeat(means, steps)) / np.repeat(scales, steps)
        features.append(torch.as_tensor(standardised, dtype=torch.float32).reshape(-1, 1))
    return torch.cat(features, dim=1)


def _predictions(
    value_fn: ValueFunction, trajectory: Trajectory, first_step: int, features: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """V_φ(x_t, t, z) of every transition of ``trajectory``, (B·T,) in the buffer's order, no grad."""
    batch, steps = trajectory.batch_size, trajectory.num_steps
    latents = trajectory.latents[:, :-1].reshape(batch * steps, *trajectory.latents.shape[2:]).to(device)
    text = prompt_text_feature(trajectory.prompt_embeds.to(device)).repeat_interleave(steps, dim=0)
    step_indices = (first_step + torch.arange(steps, device=device)).repeat(batch)
    with torch.no_grad():
        return value_fn(latents, step_indices, text, None if features is None else features.to(device)).cpu()


def variance_ratio_by_step(
    targets: torch.Tensor, baselines: torch.Tensor, step_indices: torch.Tensor
) -> dict[int, float]:
    """Var(r − V)/Var(r) at each step where the targets vary: {step index: ratio}."""
    ratios = {}
    for step in torch.unique(step_indices).tolist():
        at_step = step_indices == step
        target_variance = targets[at_step].double().var(unbiased=False)
        if at_step.sum() > 1 and target_variance > 1e-12:
            residual = (targets[at_step] - baselines[at_step]).double().var(unbiased=False)
            ratios[int(step)] = float(residual / target_variance)
    return ratios


def value_variance_ratio(targets: torch.Tensor, baselines: torch.Tensor, step_indices: torch.Tensor) -> float:
    """Var(r − V)/Var(r) per step, averaged over the steps where the targets vary (NaN if none does)."""
    ratios = variance_ratio_by_step(targets, baselines, step_indices)
    return float(np.mean(list(ratios.values()))) if ratios else float("nan")


def _push_transitions(
    pipeline, reward_fn: RewardFn, run: RunState, config: FinetuneConfig, trajectory: Trajectory,
    rewards: np.ndarray, groups: list[int], round_number: int, ranks: Ranks,
) -> dict[str, float]:
    """Standardise the rewards, cut the trained window, and push its transitions with their baselines.

    Returns the variance ratios of the baselines on these fresh transitions and the number of groups left
    out for equal rewards (metrics of the round).
    """
    means, scales, keep = _reward_statistics(run, config, trajectory.prompts, rewards, groups)
    uniform_groups = len({g for g, k in zip(groups, keep) if not k})
    if not keep.any():
        return {"value_variance_ratio": float("nan"), "baseline_variance_ratio": float("nan"),
                "uniform_groups": uniform_groups}
    kept = np.flatnonzero(keep)
    training_rewards = ((rewards - means) / scales)[kept]
    first_step, stop = config.train_steps()
    trained = trajectory.subset(kept).window(first_step, stop)
    steps = trained.num_steps
    step_indices = torch.arange(steps).repeat(len(kept))
    features = None
    baselines = torch.zeros(len(kept) * steps)
    if run.value_fn is not None:
        chunk = config.sample_batch_size or -(-config.g_batch // ranks.world_size)
        features = _value_features(
            pipeline, reward_fn, trained, means[kept], scales[kept], config, chunk, round_number, ranks
        )
    targets = torch.as_tensor(training_rewards, dtype=torch.float32).repeat_interleave(steps)
    if run.value_fn is not None:
        # Baselines come from V_φ before it is fitted on these transitions: fitted on them, an MLP memorises
        # the few trajectories' rewards and r − V collapses to noise (no learning in a shapes-world test).
        predictions = _predictions(run.value_fn, trained, first_step, features, pipeline.unet.device)
        baselines = predictions
        if config.value_shrinkage:
            absolute_steps = first_step + step_indices
            # λ_t from earlier rounds' predictions; then these (out-of-sample) predictions join them
            baselines = predictions * run.value_fn.shrinkage().cpu()[absolute_steps]
            run.value_fn.record_out_of_sample(absolute_steps, predictions, targets, SHRINKAGE_DECAY)
    raw = torch.as_tensor(rewards[kept], dtype=torch.float64).repeat_interleave(steps)
    total_baseline = (torch.as_tensor(means[kept]).repeat_interleave(steps)
                      + torch.as_tensor(scales[kept]).repeat_interleave(steps) * baselines.double())
    ratios = {
        "value_variance_ratio": (
            float("nan") if run.value_fn is None else value_variance_ratio(targets, baselines, step_indices)
        ),
        "baseline_variance_ratio": value_variance_ratio(raw, total_baseline, step_indices),
        "uniform_groups": uniform_groups,
    }
    run.buffer.push(trained, training_rewards, None if run.value_fn is None else baselines,
                    first_step=first_step, value_features=features)
    return ratios


def _value_step(run: RunState, batch: TransitionBatch, config: FinetuneConfig, ranks: Ranks, device) -> float:
    """One AdamW step of V_φ on the MSE to the reward over ``batch``; returns the loss before the step.

    Chunked and shared between ranks like a policy micro-batch (:func:`_microbatch_gradients`)."""
    run.value_optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for chunk in ranks.chunks(len(batch), config.update_batch_size):
        rows = batch.rows(chunk).to(device)
        loss = value_loss(
            run.value_fn, rows.latents, rows.step_indices, prompt_text_feature(rows.prompt_embeds), rows.rewards,
            rows.value_features if run.value_fn.extra_dim else None,
        ) * (len(chunk) / len(batch))
        loss.backward()
        total += loss.detach()
    ranks.sum_gradients(run.value_fn.parameters())
    run.value_optimizer.step()
    return float(ranks.sum(total))


def _value_steps(
    run: RunState, config: FinetuneConfig, round_number: int, device: torch.device, ranks: Ranks
) -> list[float]:
    """``value_steps`` AdamW steps of V_φ on minibatches of the buffer (MSE to the reward)."""
    if run.value_fn is None or not len(run.buffer):
        return []
    if run.value_fn.has_score:
        everything = run.buffer.get(torch.arange(len(run.buffer)))
        run.value_fn.fit_score_gain(everything.step_indices, everything.value_features, everything.rewards)
    generator = _generator(config.seed, round_number, _VALUE)
    losses = []
    for _ in range(config.value_steps):
        losses.append(_value_step(run, run.buffer.sample(config.value_batch_size, generator), config, ranks, device))
    return losses


def step_weights(scheduler, config: FinetuneConfig) -> torch.Tensor:
    """The surrogate's weight of each step of the schedule, (T,): ones, or with ``step_weighting:
    equalise`` mean(|c|/σ over the trained steps) / (|c_t|/σ_t)."""
    scheduler.set_timesteps(config.num_inference_steps)
    if config.step_weighting == "none":
        return torch.ones(config.num_inference_steps)
    scale = policy_gradient_scale(scheduler, scheduler.timesteps, config.eta)
    first, stop = config.train_steps()
    return scale[first:stop].mean() / scale


def _policy_microbatch(
    unet: torch.nn.Module,
    scheduler,
    batch: TransitionBatch,
    config: FinetuneConfig,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = clipped surrogate + β·KL_t on one micro-batch (docs/algorithm.md §4, step 4)."""
    timesteps, x_t = batch.timesteps, batch.latents
    cond, uncond = batch.prompt_embeds, batch.negative_prompt_embeds
    reference_output = None
    if config.kl_weight > 0:
        with torch.no_grad(), reference_model(unet), _autocast(config, x_t.device):
            reference_output = guided_noise_prediction(unet, x_t, timesteps, cond, uncond, config.guidance_scale)
    with _autocast(config, x_t.device):
        model_output = guided_noise_prediction(unet, x_t, timesteps, cond, uncond, config.guidance_scale)
    _, log_prob = ddim_step_with_logprob(
        scheduler, model_output, timesteps, x_t, config.eta, prev_sample=batch.next_latents
    )
    ratio = torch.exp(log_prob - batch.log_probs)
    # The baseline was predicted when the transition entered the buffer, before V_φ regressed its reward
    # (zero without a value function).
    advantage = advantages(batch.rewards, batch.baselines, config.reward_weight)
    step_weight = None if config.step_weighting == "none" else weights.to(x_t.device)[batch.step_indices]
    surrogate = policy_loss(config.clip_mode, advantage, ratio, config.clip_range, step_weight)
    loss = surrogate
    kl = torch.full((), float("nan"))
    if reference_output is not None:
        kl = step_kl(config.kl_form, scheduler, model_output, reference_output, timesteps, x_t, config.eta).mean()
        loss = surrogate + config.kl_weight * kl
    ratio = ratio.detach()
    stats = {
        "policy_loss": surrogate.detach(),
        "kl_penalty": kl.detach(),
        "ratio_dev": (ratio - 1).abs().mean(),
        "clip_fraction": ((ratio - 1).abs() > config.clip_range).float().mean(),
    }
    return loss, stats


_MICRO_STATS = ("policy_loss", "kl_penalty", "ratio_dev", "clip_fraction")


def _microbatch_gradients(
    unet, scheduler, run: RunState, batch: TransitionBatch, config: FinetuneConfig, weights: torch.Tensor,
    ranks: Ranks,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backward of ``batch``'s loss / accum, added to the LoRA gradients already accumulated.

    The rows are computed in chunks of ``update_batch_size`` (one per rank by default), each rank its own
    chunks, every chunk's mean loss weighted by its share of the rows; the micro-batch's gradient is summed
    over ranks before it joins the accumulated ones, so N ranks add the same numbers in the same order as
    one process with one chunk per rank. Returns [ranks with a non-finite loss, *stats] agreed over ranks,
    and a non-finite loss of this rank (else None)."""
    accumulated = [parameter.grad for parameter in run.lora_params]
    for parameter in run.lora_params:
        parameter.grad = None
    local = torch.zeros(1 + len(_MICRO_STATS), device=unet.device)
    bad_loss = None
    for rows in ranks.chunks(len(batch), config.update_batch_size):
        loss, stats = _policy_microbatch(unet, scheduler, batch.rows(rows).to(unet.device), config, weights)
        share = len(rows) / len(batch)
        values = [(~torch.isfinite(loss)).float(), *(stats[k].float() * share for k in _MICRO_STATS)]
        local += torch.stack([value.to(unet.device) for value in values])
        if not torch.isfinite(loss):
            bad_loss = loss.detach()
            continue
        run.scaler.scale(loss * share / config.accum).backward()
    ranks.sum_gradients(run.lora_params)
    for parameter, earlier in zip(run.lora_params, accumulated):
        if earlier is not None:
            parameter.grad = earlier if parameter.grad is None else earlier + parameter.grad
    return ranks.sum(local), bad_loss


def _policy_step(
    unet, scheduler, run: RunState, config: FinetuneConfig, generator: torch.Generator, weights: torch.Tensor,
    ranks: Ranks,
) -> tuple[str | None, float, list[dict[str, torch.Tensor]]]:
    """One optimiser step over ``accum`` micro-batches; returns (problem or None, grad norm, stats)."""
    run.optimizer.zero_grad(set_to_none=True)
    micro_stats: list[dict[str, torch.Tensor]] = []
    for _ in range(config.accum):
        batch = run.buffer.sample(config.p_batch, generator)
        agreed, bad_loss = _microbatch_gradients(unet, scheduler, run, batch, config, weights, ranks)
        if agreed[0] > 0:  # every rank skips the step together
            run.optimizer.zero_grad(set_to_none=True)
            value = "" if bad_loss is None else f" ({bad_loss.item()})"
            where = "" if not ranks.distributed else f" on {int(agreed[0])} chunk(s) of the ranks"
            return f"non-finite loss{value}{where}", float("nan"), []
        micro_stats.append(dict(zip(_MICRO_STATS, agreed[1:])))
    run.scaler.unscale_(run.optimizer)  # true gradients before the norm (no-op unless fp16)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.lora_params, config.max_grad_norm))
    if not np.isfinite(grad_norm):
        run.optimizer.zero_grad(set_to_none=True)
        problem = f"non-finite gradient norm ({grad_norm})"
        if run.scaler.is_enabled():
            run.scaler.update()  # an fp16 overflow lowers the loss scale
            problem += f"; fp16 loss scale lowered to {run.scaler.get_scale():g}"
        return problem, grad_norm, []
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return None, grad_norm, micro_stats


def _policy_steps(
    unet, scheduler, run: RunState, config: FinetuneConfig, round_number: int, weights: torch.Tensor, ranks: Ranks,
) -> dict[str, float]:
    """``p_step`` policy steps; a step with a non-finite loss or gradient is skipped and counted."""
    stats: dict[str, list[float]] = {"policy_loss": [], "kl_penalty": [], "ratio_dev": [], "clip_fraction": []}
    grad_norms, skipped = [], 0
    if len(run.buffer):
        scheduler.set_timesteps(config.num_inference_steps)
        generator = _generator(config.seed, round_number, _POLICY)
        for step in range(config.p_step):
            problem, grad_norm, micro_stats = _policy_step(unet, scheduler, run, config, generator, weights, ranks)
            if problem is not None:
                skipped += 1
                if ranks.is_main:
                    logger.warning("round %d, policy step %d: %s; step skipped, LoRA unchanged",
                                   round_number, step + 1, problem)
                continue
            grad_norms.append(grad_norm)
            for micro in micro_stats:
                for key, value in micro.items():
                    stats[key].append(float(value))
    return {**{key: _mean(values) for key, values in stats.items()}, "grad_norm": _mean(grad_norms),
            "skipped_steps": skipped}


def _kl_report(unet, scheduler, trajectory: Trajectory, config: FinetuneConfig, ranks: Ranks) -> float:
    """The exact KL bound (nats) averaged over the round's first ``kl_report_trajectories`` trajectories
    (shared between ranks)."""
    if config.kl_report_trajectories == 0:
        return float("nan")
    share = ranks.shard(min(config.kl_report_trajectories, trajectory.batch_size))
    bounds = []
    if len(share):
        with _autocast(config, unet.device):
            bounds = [trajectory_kl_bound(
                unet, scheduler, trajectory.subset(share) if ranks.distributed else trajectory,
                num_trajectories=len(share), chunk_size=config.sample_batch_size or config.g_batch,
            ).cpu()]
    return float(torch.cat(ranks.gather(bounds)).mean())


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class _Stopwatch:
    """Seconds spent per phase of a round."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - tick


def _train_round(
    pipeline, prompts: list[str], reward_fn: RewardFn, config: FinetuneConfig, round_number: int,
    run: RunState, weights: torch.Tensor, ranks: Ranks,
) -> dict[str, float]:
    """One round (docs/algorithm.md §4); returns its metrics (keys :data:`METRIC_NAMES`). With several
    ranks each does its share of the work and all end the round in the same state (dpok.rl.distributed)."""
    unet, scheduler, device = pipeline.unet, pipeline.scheduler, pipeline.unet.device
    clock = _Stopwatch()
    with clock("sampling"):  # 1. prompts and trajectories from the current policy, no grad
        round_prompts, groups = _draw_prompts(prompts, config, round_number)
        with _autocast(config, device):
            trajectory = _sample_round(pipeline, round_prompts, groups, config, round_number, ranks)
    with clock("reward"):
        rewards = _score_shared(reward_fn, trajectory.images, round_prompts, round_number, ranks)
    run.reward_log.extend([round_number, prompt, float(r)] for prompt, r in zip(round_prompts, rewards))
    with clock("kl_report"):
        kl_bound = _kl_report(unet, scheduler, trajectory, config, ranks)
    with clock("buffer"):  # 2. standardised rewards and the trained steps' transitions, with baselines
        baseline_metrics = _push_transitions(
            pipeline, reward_fn, run, config, trajectory, rewards, groups, round_number, ranks
        )
        del trajectory
    with clock("value"):  # 3. value steps
        value_losses = _value_steps(run, config, round_number, device, ranks)
    with clock("policy"):  # 4. policy steps
        policy = _policy_steps(unet, scheduler, run, config, round_number, weights, ranks)
    return {
        "round": round_number,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "reward_min": float(rewards.min()),
        "reward_max": float(rewards.max()),
        "kl_bound_nats": kl_bound,
        "kl_penalty": policy["kl_penalty"],
        "policy_loss": policy["policy_loss"],
        "value_loss": _mean(value_losses),
        "ratio_dev": policy["ratio_dev"],
        "clip_fraction": policy["clip_fraction"],
        "grad_norm": policy["grad_norm"],
        "skipped_steps": policy["skipped_steps"],
        **baseline_metrics,
        "seconds_sampling": clock.seconds["sampling"],
        "seconds_reward": clock.seconds["reward"],
        "seconds_kl_report": clock.seconds["kl_report"],
        "seconds_buffer": clock.seconds["buffer"],
        "seconds_value": clock.seconds["value"],
        "seconds_policy": clock.seconds["policy"],
    }


def _prepare_pipeline(pipeline, config: FinetuneConfig) -> None:
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
        module.eval()
    if pipeline.unet.dtype == torch.float16 and config.mixed_precision != "fp16":
        logger.warning(
            "the UNet is float16 and finetune.mixed_precision is %r: gradients pass through float16 activations "
            "without loss scaling and may underflow; mixed_precision: fp16 adds the scaling", config.mixed_precision,
        )


def train_dpok(
    pipeline,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    config: FinetuneConfig,
    checkpoint_dir: str | Path,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> TrainingResult:
    """Fine-tune ``pipeline.unet`` with a LoRA adapter by DPOK; returns the history and final LoRA.

    ``pipeline`` is a diffusers ``StableDiffusionPipeline`` with a DDIM scheduler (modified in place: the
    UNet gets the adapter). ``reward_fn(images_uint8_NHWC, prompts) -> rewards`` scores a batch.
    Checkpoints go to ``checkpoint_dir`` (see :mod:`dpok.rl.checkpoint`); with ``config.resume`` the
    run continues from the latest one there. ``on_round(round, metrics)`` is called after each round
    (and its checkpoint, if any).

    ``ranks`` (:func:`dpok.rl.distributed.start_ranks`): the processes of a multi-process launch, each
    calling this with its own pipeline on its own device; they share every round's work, end each round
    in the same state, and only the main rank writes checkpoints, reports progress and calls ``on_round``.
    """
    prompts = _check_inputs(pipeline, prompts, config)
    ranks = ranks or Ranks()
    checkpoint_dir = Path(checkpoint_dir)
    unet, scheduler = pipeline.unet, pipeline.scheduler
    # Read and check an existing run before touching the pipeline, so a refused resume changes nothing.
    if ranks.is_main:
        clean_partial_checkpoints(checkpoint_dir)
    ranks.barrier()
    previous_run = list_checkpoints(checkpoint_dir)
    saved = None
    if config.resume and previous_run:
        saved = load_checkpoint(previous_run[-1])
        _check_resumable(saved.config, config, previous_run[-1])

    _prepare_pipeline(pipeline, config)
    run = RunState.create(unet, config)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    resumed_from = last_checkpoint = None
    if saved is not None:
        run.restore(saved, unet)
        resumed_from = last_checkpoint = previous_run[-1]
        previous_run = []  # continued, not replaced
        logger.info("Resuming DPOK from %s (round %d of %d)", resumed_from, run.round, config.num_rounds)
    elif previous_run and ranks.is_main:
        logger.info(
            "finetune.rl.resume is false: %d old checkpoint(s) in %s will be deleted once this run's first "
            "checkpoint is written", len(previous_run), checkpoint_dir,
        )
    weights = step_weights(scheduler, config)

    bar = tqdm(total=config.num_rounds, initial=run.round, disable=not progress or not ranks.is_main,
               desc="DPOK rounds")
    try:
        for round_number in range(run.round + 1, config.num_rounds + 1):
            metrics = _train_round(pipeline, prompts, reward_fn, config, round_number, run, weights, ranks)
            run.history.append(metrics)
            if round_number % config.checkpoint_every == 0 or round_number == config.num_rounds:
                if ranks.is_main:
                    last_checkpoint = save_checkpoint(checkpoint_dir, run.capture(unet, config))
                    if previous_run:  # a fresh run replaces the old one only now that it has a checkpoint
                        remove_checkpoints(p for p in previous_run if p != last_checkpoint)
                        previous_run = []
                    prune_checkpoints(checkpoint_dir, config.keep_last_checkpoints)
                ranks.barrier()  # the others wait: the round's checkpoint exists before anyone goes on
                if not ranks.is_main:
                    last_checkpoint = list_checkpoints(checkpoint_dir)[-1]
            if not ranks.is_main:
                continue
            if on_round is not None:
                on_round(round_number, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", kl=f"{metrics['kl_bound_nats']:.3g}")
            logger.info(
                "round %d/%d: reward %.4f ± %.4f, KL bound %.4g nats, ratio dev %.3g, V ratio %.3g, skipped %d",
                round_number, config.num_rounds, metrics["reward_mean"], metrics["reward_std"],
                metrics["kl_bound_nats"], metrics["ratio_dev"], metrics["value_variance_ratio"],
                metrics["skipped_steps"],
            )
    finally:
        bar.close()

    return TrainingResult(
        history=run.history,
        lora_state={k: v.cpu() for k, v in lora_state_dict(unet).items()},
        config=config,
        checkpoint_dir=checkpoint_dir,
        last_checkpoint=last_checkpoint,
        resumed_from=resumed_from,
        reward_log=run.reward_log,
        value_variance_by_step=_final_value_variance(run),
    )


def _final_value_variance(run: RunState) -> dict[int, float]:
    """Var(r − V)/Var(r) per step over the buffer's transitions (their out-of-sample baselines)."""
    if run.value_fn is None or not len(run.buffer):
        return {}
    everything = run.buffer.get(torch.arange(len(run.buffer)))
    return variance_ratio_by_step(everything.rewards, everything.baselines, everything.step_indices)


__all__ = [
    "METRIC_NAMES", "RunState", "attach_trainable_lora", "TrainingResult", "step_weights", "train_dpok",
    "value_variance_ratio", "variance_ratio_by_step",
]
