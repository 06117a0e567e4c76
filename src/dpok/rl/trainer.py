"""The DPOK training loop (DPOK.md §4): rounds of sample → reward → buffer → value steps → policy steps.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from dpok.rl.kl import reference_model, step_kl, trajectory_kl_bound
from dpok.rl.losses import PerPromptRewardNormaliser, advantages, policy_loss
from dpok.rl.sampling import (
    Trajectory,
    ddim_step_with_logprob,
    guided_noise_prediction,
    sample_trajectories,
    validate_scheduler_for_logprob,
)
from dpok.rl.value import ValueFunction, prompt_text_feature, value_update

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
    "seconds_sampling",
    "seconds_reward",
    "seconds_kl_report",
    "seconds_update",
)
"""Keys of each round's metrics. ``kl_bound_nats``: exact KL bound (nats, summed over steps and latent
elements) averaged over this round's first ``kl_report_trajectories`` fresh trajectories;
``kl_penalty``: the optimised KL term (``kl_form``, before β) averaged over micro-batches;
``policy_loss``: the clipped surrogate without the KL term; ``grad_norm``: LoRA gradient norm before
clipping; ``skipped_steps``: policy steps dropped for a non-finite loss or gradient."""

# Random streams of a round (see module docstring).
_PROMPTS, _SAMPLING, _VALUE, _POLICY, _LORA_INIT, _VALUE_INIT = range(6)

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
    """

    history: list[dict[str, float]]
    lora_state: dict[str, torch.Tensor]
    config: FinetuneConfig
    checkpoint_dir: Path
    last_checkpoint: Path | None
    resumed_from: Path | None

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
        details = ", ".join(f"finetune.{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume from '{path}': it was written with different settings ({details}). "
            "Restore them, or set finetune.resume=false to start a fresh run in this folder"
        )
    if checkpoint_round(path) > config.num_rounds:
        raise ValueError(
            f"cannot resume from '{path}': it is past finetune.num_rounds={config.num_rounds}; raise num_rounds "
            "or set finetune.resume=false"
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


def _sample_round(pipeline, prompts: list[str], config: FinetuneConfig, round_number: int) -> Trajectory:
    generators = [_generator(config.seed, round_number, _SAMPLING, i) for i in range(len(prompts))]
    chunk = config.sample_batch_size or len(prompts)
    parts = [
        sample_trajectories(
            pipeline,
            prompts[start : start + chunk],
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            eta=config.eta,
            generator=generators[start : start + chunk],
        )
        for start in range(0, len(prompts), chunk)
    ]
    return Trajectory.concatenate(parts)


def _earliest_steps(trajectory: Trajectory, fraction: float) -> Trajectory:
    """The trajectory cut to its first ``ceil(fraction · T)`` steps (the noisiest), whose transitions train."""
    keep = max(1, int(np.ceil(fraction * trajectory.num_steps - 1e-9)))
    if keep == trajectory.num_steps:
        return trajectory
    return replace(
        trajectory,
        latents=trajectory.latents[:, : keep + 1],
        timesteps=trajectory.timesteps[:keep],
        log_probs=trajectory.log_probs[:, :keep],
        noise_preds=trajectory.noise_preds[:, :keep],
    )


def _baselines(value_fn: ValueFunction, trajectory: Trajectory, device: torch.device) -> torch.Tensor:
    """V_φ(x_t, t, z) of every transition of ``trajectory``, (B·T,) in the buffer's order, no grad."""
    batch, steps = trajectory.batch_size, trajectory.num_steps
    latents = trajectory.latents[:, :-1].reshape(batch * steps, *trajectory.latents.shape[2:]).to(device)
    features = prompt_text_feature(trajectory.prompt_embeds.to(device)).repeat_interleave(steps, dim=0)
    with torch.no_grad():
        return value_fn(latents, torch.arange(steps, device=device).repeat(batch), features).cpu()


def _policy_microbatch(
    unet: torch.nn.Module,
    scheduler,
    batch: TransitionBatch,
    config: FinetuneConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = clipped surrogate + β·KL_t on one micro-batch (DPOK.md §4, step 4)."""
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
    surrogate = policy_loss(config.clip_mode, advantage, ratio, config.clip_range)
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


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def train_dpok(
    pipeline,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    config: FinetuneConfig,
    checkpoint_dir: str | Path,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Fine-tune ``pipeline.unet`` with a LoRA adapter by DPOK; returns the history and final LoRA.

    ``pipeline`` is a diffusers ``StableDiffusionPipeline`` with a DDIM scheduler (modified in place: the
    UNet gets the adapter). ``reward_fn(images_uint8_NHWC, prompts) -> rewards`` scores a batch.
    Checkpoints go to ``checkpoint_dir`` (see :mod:`dpok.rl.checkpoint`); with ``config.resume`` the
    run continues from the latest one there. ``on_round(round, metrics)`` is called after each round
    (and its checkpoint, if any).
    """
    prompts = _check_inputs(pipeline, prompts, config)
    checkpoint_dir = Path(checkpoint_dir)
    unet, scheduler = pipeline.unet, pipeline.scheduler
    device = unet.device
    # Read and check an existing run before touching the pipeline, so a refused resume changes nothing.
    clean_partial_checkpoints(checkpoint_dir)
    previous_run = list_checkpoints(checkpoint_dir)
    state = None
    if config.resume and previous_run:
        state = load_checkpoint(previous_run[-1])
        _check_resumable(state.config, config, previous_run[-1])

    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
        module.eval()

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(_seed(config.seed, _LORA_INIT))
        lora_params = attach_lora(unet, config.lora_rank, config.lora_alpha, config.lora_target_modules)
    # The adapter trains in float32 whatever the UNet's dtype: float16 weights would round away updates of
    # lr 1e-5, and the fp16 loss scaler cannot unscale float16 gradients. peft casts at the adapter's edges.
    for parameter in lora_params:
        if parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if unet.dtype == torch.float16 and config.mixed_precision != "fp16":
        logger.warning(
            "the UNet is float16 and finetune.mixed_precision is %r: gradients pass through float16 activations "
            "without loss scaling and may underflow; mixed_precision: fp16 adds the scaling", config.mixed_precision,
        )
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # Dynamic loss scaling for fp16 only; disabled, its calls are the plain ones (scale(x) is x).
    scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")
    optimizer = torch.optim.AdamW(lora_params, lr=config.learning_rate, weight_decay=config.adam_weight_decay)

    value_fn = value_optimizer = None
    if config.use_value_function:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_seed(config.seed, _VALUE_INIT))
            size = unet.config.sample_size
            value_fn = ValueFunction(
                (unet.config.in_channels, size, size), unet.config.cross_attention_dim, config.num_inference_steps
            ).to(device)
        value_optimizer = torch.optim.AdamW(value_fn.parameters(), lr=config.value_learning_rate)
    normaliser = (
        PerPromptRewardNormaliser(config.per_prompt_window, config.per_prompt_min_count, scale=config.per_prompt_scale)
        if config.per_prompt_normalisation
        else None
    )
    buffer = TransitionBuffer(config.buffer_size)

    history: list[dict[str, float]] = []
    start, resumed_from, last_checkpoint = 0, None, None
    if state is not None:
        resumed_from = last_checkpoint = previous_run[-1]
        load_lora_state_dict(unet, {k: v.to(device) for k, v in state.lora.items()})
        optimizer.load_state_dict(state.policy_optimizer)
        if value_fn is not None:
            value_fn.load_state_dict(state.value_function)
            value_optimizer.load_state_dict(state.value_optimizer)
        if normaliser is not None:
            normaliser.load_state_dict(state.reward_normaliser)
        buffer.load_state_dict(state.buffer)
        restore_rng_state(state.rng)
        start, history = state.round, list(state.history)
        previous_run = []  # continued, not replaced
        logger.info("Resuming DPOK from %s (round %d of %d)", resumed_from, start, config.num_rounds)
    elif previous_run:
        logger.info(
            "finetune.resume is false: %d old checkpoint(s) in %s will be deleted once this run's first "
            "checkpoint is written", len(previous_run), checkpoint_dir,
        )

    bar = tqdm(total=config.num_rounds, initial=start, disable=not progress, desc="DPOK rounds")
    try:
        for round_number in range(start + 1, config.num_rounds + 1):
            metrics = _train_round(
                pipeline, prompts, reward_fn, config, round_number, buffer, optimizer, lora_params,
                value_fn, value_optimizer, normaliser, scaler,
            )
            history.append(metrics)
            if round_number % config.checkpoint_every == 0 or round_number == config.num_rounds:
                last_checkpoint = save_checkpoint(
                    checkpoint_dir,
                    TrainingState(
                        round=round_number,
                        lora={k: v.cpu().contiguous() for k, v in lora_state_dict(unet).items()},
                        policy_optimizer=optimizer.state_dict(),
                        buffer=buffer.state_dict(),
                        history=list(history),
                        config=config.to_dict(),
                        rng=capture_rng_state(),
                        value_function=None if value_fn is None else {
                            k: v.detach().cpu().contiguous() for k, v in value_fn.state_dict().items()
                        },
                        value_optimizer=None if value_optimizer is None else value_optimizer.state_dict(),
                        reward_normaliser=None if normaliser is None else normaliser.state_dict(),
                    ),
                )
                if previous_run:  # a fresh run replaces the old one only now that it has a checkpoint
                    remove_checkpoints(p for p in previous_run if p != last_checkpoint)
                    previous_run = []
                prune_checkpoints(checkpoint_dir, config.keep_last_checkpoints)
            if on_round is not None:
                on_round(round_number, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", kl=f"{metrics['kl_bound_nats']:.3g}")
            logger.info(
                "round %d/%d: reward %.4f ± %.4f, KL bound %.4g nats, ratio dev %.3g, skipped %d",
                round_number, config.num_rounds, metrics["reward_mean"], metrics["reward_std"],
                metrics["kl_bound_nats"], metrics["ratio_dev"], metrics["skipped_steps"],
            )
    finally:
        bar.close()

    return TrainingResult(
        history=history,
        lora_state={k: v.cpu() for k, v in lora_state_dict(unet).items()},
        config=config,
        checkpoint_dir=checkpoint_dir,
        last_checkpoint=last_checkpoint,
        resumed_from=resumed_from,
    )


def _train_round(
    pipeline,
    prompts: list[str],
    reward_fn: RewardFn,
    config: FinetuneConfig,
    round_number: int,
    buffer: TransitionBuffer,
    optimizer: torch.optim.Optimizer,
    lora_params: list[torch.nn.Parameter],
    value_fn: ValueFunction | None,
    value_optimizer: torch.optim.Optimizer | None,
    normaliser: PerPromptRewardNormaliser | None,
    scaler: torch.amp.GradScaler,
) -> dict[str, float]:
    """One round; returns its metrics (keys :data:`METRIC_NAMES`)."""
    unet, scheduler = pipeline.unet, pipeline.scheduler
    device = unet.device

    # 1. prompts and trajectories from the current policy, no grad
    tick = time.perf_counter()
    n_prompts = config.g_batch // config.trajectories_per_prompt
    choice = torch.randint(len(prompts), (n_prompts,), generator=_generator(config.seed, round_number, _PROMPTS))
    round_prompts = [prompts[i] for i in choice.tolist() for _ in range(config.trajectories_per_prompt)]
    with _autocast(config, device):
        trajectory = _sample_round(pipeline, round_prompts, config, round_number)
    seconds_sampling = time.perf_counter() - tick

    tick = time.perf_counter()
    rewards = _score(reward_fn, trajectory.images, round_prompts, round_number)
    seconds_reward = time.perf_counter() - tick

    tick = time.perf_counter()
    kl_bound = float("nan")
    if config.kl_report_trajectories > 0:
        with _autocast(config, device):
            bounds = trajectory_kl_bound(
                unet, scheduler, trajectory, num_trajectories=config.kl_report_trajectories,
                chunk_size=config.sample_batch_size or config.g_batch,
            )
        kl_bound = float(bounds.mean())
    seconds_kl_report = time.perf_counter() - tick

    # 2. transitions into the FIFO buffer, with the rewards the update uses
    tick = time.perf_counter()
    training_rewards = rewards if normaliser is None else normaliser(round_prompts, rewards)
    # Baselines come from V_φ before it is fitted on these transitions: fitted on them, an MLP on 256-d
    # latents memorises their rewards and r − V collapses to noise (no learning in a shapes-world test).
    trained = _earliest_steps(trajectory, config.train_timestep_fraction)
    baselines = None if value_fn is None else _baselines(value_fn, trained, device)
    buffer.push(trained, training_rewards, baselines)
    del trajectory

    # 3. value steps
    value_losses: list[float] = []
    if value_fn is not None:
        generator = _generator(config.seed, round_number, _VALUE)
        for _ in range(config.value_steps):
            batch = buffer.sample(config.value_batch_size, generator).to(device)
            value_losses.append(
                value_update(value_fn, value_optimizer, batch.latents, batch.step_indices,
                             prompt_text_feature(batch.prompt_embeds), batch.rewards)
            )

    # 4. policy steps, each accumulating `accum` micro-batches
    scheduler.set_timesteps(config.num_inference_steps)
    generator = _generator(config.seed, round_number, _POLICY)
    stats: dict[str, list[float]] = {"policy_loss": [], "kl_penalty": [], "ratio_dev": [], "clip_fraction": []}
    grad_norms: list[float] = []
    skipped = 0
    for step in range(config.p_step):
        optimizer.zero_grad(set_to_none=True)
        step_stats: list[dict[str, torch.Tensor]] = []
        problem, unscaled = None, False
        for _ in range(config.accum):
            batch = buffer.sample(config.p_batch, generator).to(device)
            loss, micro_stats = _policy_microbatch(unet, scheduler, batch, config)
            if not torch.isfinite(loss):
                problem = f"non-finite loss ({loss.item()})"
                break
            scaler.scale(loss / config.accum).backward()
            step_stats.append(micro_stats)
        if problem is None:
            scaler.unscale_(optimizer)  # true gradients before the norm (no-op unless fp16)
            unscaled = True
            grad_norm = torch.nn.utils.clip_grad_norm_(lora_params, config.max_grad_norm)
            if not torch.isfinite(grad_norm):
                problem = f"non-finite gradient norm ({float(grad_norm)})"
        if problem is not None:
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            if unscaled and scaler.is_enabled():
                scaler.update()  # an fp16 overflow lowers the loss scale
                problem += f"; fp16 loss scale lowered to {scaler.get_scale():g}"
            logger.warning(
                "round %d, policy step %d: %s; step skipped, LoRA unchanged", round_number, step + 1, problem
            )
            continue
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        grad_norms.append(float(grad_norm))
        for micro in step_stats:
            for key, value in micro.items():
                stats[key].append(float(value))
    seconds_update = time.perf_counter() - tick

    return {
        "round": round_number,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "reward_min": float(rewards.min()),
        "reward_max": float(rewards.max()),
        "kl_bound_nats": kl_bound,
        "kl_penalty": _mean(stats["kl_penalty"]),
        "policy_loss": _mean(stats["policy_loss"]),
        "value_loss": _mean(value_losses),
        "ratio_dev": _mean(stats["ratio_dev"]),
        "clip_fraction": _mean(stats["clip_fraction"]),
        "grad_norm": _mean(grad_norms),
        "skipped_steps": skipped,
        "seconds_sampling": seconds_sampling,
        "seconds_reward": seconds_reward,
        "seconds_kl_report": seconds_kl_report,
        "seconds_update": seconds_update,
    }


__all__ = ["METRIC_NAMES", "TrainingResult", "train_dpok"]
