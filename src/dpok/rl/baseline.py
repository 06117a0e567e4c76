"""The baseline (docs/algorithm.md §4, steps 3–4, and §5): the standardised rewards, V_φ's extra inputs
(``value.features``) and its predictions, the shrinkage λ_t (``value.shrinkage``), the value steps, and how
much variance the baselines remove.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from dpok.rl.buffer import TransitionBatch
from dpok.rl.config import FinetuneConfig
from dpok.rl.context import RoundContext
from dpok.rl.losses import group_statistics
from dpok.rl.rollout import VALUE_STREAM, score, stream_generator
from dpok.rl.sampling import Trajectory, decode_latents, predicted_original_sample
from dpok.rl.value import ValueFunction, prompt_text_feature, value_loss

if TYPE_CHECKING:
    from dpok.rl.state import RunState

def value_feature_size(config: FinetuneConfig, latent_shape: Sequence[int]) -> int:
    """The number of V_φ's extra inputs (``value.features``)."""
    latent_size = int(np.prod(latent_shape))
    return {"latent": 0, "tweedie": latent_size, "tweedie_reward": latent_size + 1}[config.value.features]


def _reward_statistics(
    run: RunState, config: FinetuneConfig, prompts: list[str], rewards: np.ndarray, groups: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trajectory: the mean and scale that standardise its reward, and whether it trains."""
    if config.advantage.normalisation == "group":
        return group_statistics(groups, rewards, config.advantage.per_prompt_scale)
    keep = np.ones(len(rewards), dtype=bool)
    if run.normaliser is not None:
        return (*run.normaliser.statistics(prompts, rewards), keep)
    return np.zeros(len(rewards)), np.ones(len(rewards)), keep


def _value_features(
    context: RoundContext, round_number: int, trajectory: Trajectory, means: np.ndarray, scales: np.ndarray
) -> torch.Tensor | None:
    """The extra inputs of V_φ for every transition of ``trajectory`` (``value.features``), (B·T, F)."""
    config, ranks, pipeline = context.config, context.ranks, context.pipeline
    if config.value.features == "latent":
        return None
    chunk_size = config.sample_chunk(ranks.world_size)
    batch, steps = trajectory.batch_size, trajectory.num_steps
    shape = trajectory.latents.shape[2:]
    x_t = trajectory.latents[:, :-1].reshape(batch * steps, *shape)
    timesteps = trajectory.timesteps.repeat(batch)
    x0_hat = predicted_original_sample(
        pipeline.scheduler, trajectory.noise_preds.reshape(batch * steps, *shape), timesteps, x_t
    )
    features = [x0_hat.flatten(1).cpu()]
    if config.value.features == "tweedie_reward":
        prompts = [p for p in trajectory.prompts for _ in range(steps)]
        device = pipeline.unet.device
        local = [  # decoding and scoring x̂_0 is the costly part: shared between ranks
            score(context.reward_fn, decode_latents(pipeline, x0_hat[chunk.start : chunk.stop].to(device)),
                  prompts[chunk.start : chunk.stop], round_number)
            for chunk in ranks.chunks(batch * steps, chunk_size)
        ]
        scores = np.concatenate(ranks.gather(local) if ranks.distributed else local)
        standardised = (scores - np.repeat(means, steps)) / np.repeat(scales, steps)
        features.append(torch.as_tensor(standardised, dtype=torch.float32).reshape(-1, 1))
    return torch.cat(features, dim=1)


def value_predictions(
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


def standardised_advantages(
    context: RoundContext, run: RunState, trajectory: Trajectory, rewards: np.ndarray, groups: list[int]
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """α·r̃ per trajectory (the group or prompt mean as the only baseline), which trajectories carry a
    comparison, and the round's baseline metrics: the advantages of ``policy.objective: nft``
    (``dpok.rl.nft``), which trains on images, not transitions, and uses no V_φ."""
    config = context.config
    means, scales, keep = _reward_statistics(run, config, trajectory.prompts, rewards, groups)
    advantage = config.advantage.reward_weight * (rewards - means) / scales
    raw = torch.as_tensor(rewards[keep], dtype=torch.float64)
    ratio = value_variance_ratio(raw, torch.as_tensor(means[keep]), torch.zeros(int(keep.sum()), dtype=torch.long))
    return advantage, keep, {"value_variance_ratio": float("nan"), "baseline_variance_ratio": ratio,
                             "uniform_groups": len({g for g, k in zip(groups, keep) if not k})}


def push_transitions(
    context: RoundContext, run: RunState, round_number: int, trajectory: Trajectory, rewards: np.ndarray,
    groups: list[int],
) -> dict[str, float]:
    """Step 3: standardise the rewards, cut the trained window, and push its transitions with their
    baselines.

    Returns the variance ratios of the baselines on these fresh transitions and the number of groups left
    out for equal rewards (metrics of the round).
    """
    config = context.config
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
        features = _value_features(context, round_number, trained, means[kept], scales[kept])
    targets = torch.as_tensor(training_rewards, dtype=torch.float32).repeat_interleave(steps)
    if run.value_fn is not None:
        # Baselines come from V_φ before it is fitted on these transitions: fitted on them, an MLP memorises
        # the few trajectories' rewards and r − V collapses to noise (no learning in a shapes-world test).
        predictions = value_predictions(run.value_fn, trained, first_step, features, context.device)
        baselines = predictions
        if config.value.shrinkage:
            absolute_steps = first_step + step_indices
            # λ_t from earlier rounds' predictions; then these (out-of-sample) predictions join them
            baselines = predictions * run.value_fn.shrinkage().cpu()[absolute_steps]
            run.value_fn.record_out_of_sample(absolute_steps, predictions, targets, config.value.shrinkage_decay)
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


def _value_step(context: RoundContext, run: RunState, batch: TransitionBatch) -> float:
    """One AdamW step of V_φ on the MSE to the reward over ``batch``; returns the loss before the step.

    Chunked and shared between ranks like a policy micro-batch (:mod:`dpok.rl.update`)."""
    ranks, device = context.ranks, context.device
    run.value_optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for chunk in ranks.chunks(len(batch), context.config.runtime.update_batch_size):
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


def value_steps(context: RoundContext, run: RunState, round_number: int) -> list[float]:
    """Step 4: ``value.steps`` AdamW steps of V_φ on minibatches of the buffer (MSE to the reward)."""
    config = context.config
    if run.value_fn is None or not len(run.buffer):
        return []
    if run.value_fn.has_score:
        everything = run.buffer.get(torch.arange(len(run.buffer)))
        run.value_fn.fit_score_gain(everything.step_indices, everything.value_features, everything.rewards)
    generator = stream_generator(config.seed, round_number, VALUE_STREAM)
    losses = []
    for _ in range(config.value.steps):
        losses.append(_value_step(context, run, run.buffer.sample(config.value.batch_size, generator)))
    return losses


def final_value_variance(run: RunState) -> dict[int, float]:
    """Var(r − V)/Var(r) per step over the buffer's transitions (their out-of-sample baselines)."""
    if run.value_fn is None or not len(run.buffer):
        return {}
    everything = run.buffer.get(torch.arange(len(run.buffer)))
    return variance_ratio_by_step(everything.rewards, everything.baselines, everything.step_indices)


__all__ = [
    "final_value_variance", "push_transitions", "standardised_advantages", "value_feature_size", "value_predictions",
    "value_steps", "value_variance_ratio", "variance_ratio_by_step",
]
