"""The policy update (docs/algorithm.md §4, step 5): the surrogate's step weights (§5), the loss of a
micro-batch (clipped surrogate + β·KL_t), its gradients accumulated over micro-batches and shared between
ranks, the policy steps, which skip a non-finite loss or gradient; and the round's exact KL report (§3).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from dpok.rl.buffer import TransitionBatch, TransitionBuffer
from dpok.rl.config import FinetuneConfig
from dpok.rl.context import RoundContext
from dpok.rl.kl import reference_model, step_kl, trajectory_kl_bound
from dpok.rl.losses import advantages, policy_loss
from dpok.rl.precision import autocast, diffusion_passes, half_weights
from dpok.rl.rollout import POLICY_STREAM, stream_generator
from dpok.rl.sampling import Trajectory, ddim_step_with_logprob, guided_noise_prediction, policy_gradient_scale

if TYPE_CHECKING:
    from dpok.rl.state import RunState

logger = logging.getLogger(__name__)

_MICRO_STATS = ("policy_loss", "kl_penalty", "ratio_dev", "clip_fraction")


def step_weights(scheduler, config: FinetuneConfig) -> torch.Tensor:
    """The surrogate's weight of each step of the schedule, (T,): ones, or with ``step_weighting:
    equalise`` mean(|c|/σ over the trained steps) / (|c_t|/σ_t)."""
    scheduler.set_timesteps(config.sampler.num_inference_steps)
    if config.policy.step_weighting == "none":
        return torch.ones(config.sampler.num_inference_steps)
    scale = policy_gradient_scale(scheduler, scheduler.timesteps, config.sampler.eta)
    first, stop = config.train_steps()
    return scale[first:stop].mean() / scale


def mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def rescore(context: RoundContext, batch: TransitionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The current policy's guided prediction at each transition of ``batch`` and its log p_θ(x_{t−1} | x_t, z).

    The UNet runs as the sampler ran it (the same module, precision and call shape, ``dpok.rl.precision``),
    so for transitions the current policy sampled the log-probability is the stored one, to the last bit.
    """
    config = context.config
    with autocast(context.precision):
        model_output = guided_noise_prediction(
            context.diffusion_unet, batch.latents, batch.timesteps, batch.prompt_embeds, batch.negative_prompt_embeds,
            config.sampler.guidance_scale, context.call_rows,
        )
    _, log_prob = ddim_step_with_logprob(
        context.scheduler, model_output, batch.timesteps, batch.latents, config.sampler.eta, prev_sample=batch.next_latents
    )
    return model_output, log_prob


def _policy_microbatch(
    context: RoundContext, batch: TransitionBatch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = clipped surrogate + β·KL_t on one micro-batch (docs/algorithm.md §4, step 5)."""
    unet, scheduler, config = context.diffusion_unet, context.scheduler, context.config
    timesteps, x_t = batch.timesteps, batch.latents
    cond, uncond = batch.prompt_embeds, batch.negative_prompt_embeds
    reference_output = None
    if config.kl.weight > 0:
        with torch.no_grad(), reference_model(context.unet), autocast(context.precision):
            reference_output = guided_noise_prediction(
                unet, x_t, timesteps, cond, uncond, config.sampler.guidance_scale, context.call_rows
            )
    model_output, log_prob = rescore(context, batch)
    ratio = torch.exp(log_prob - batch.log_probs)
    # The baseline was predicted when the transition entered the buffer, before V_φ regressed its reward
    # (zero without a value function).
    advantage = advantages(batch.rewards, batch.baselines, config.advantage.reward_weight)
    step_weight = None if config.policy.step_weighting == "none" else context.step_weights.to(x_t.device)[batch.step_indices]
    surrogate = policy_loss(config.policy.clip_mode, advantage, ratio, config.policy.clip_range, step_weight)
    loss = surrogate
    kl = torch.full((), float("nan"))
    if reference_output is not None:
        kl = step_kl(config.kl.form, scheduler, model_output, reference_output, timesteps, x_t, config.sampler.eta).mean()
        loss = surrogate + config.kl.weight * kl
    ratio = ratio.detach()
    stats = {
        "policy_loss": surrogate.detach(),
        "kl_penalty": kl.detach(),
        "ratio_dev": (ratio - 1).abs().mean(),
        "clip_fraction": ((ratio - 1).abs() > config.policy.clip_range).float().mean(),
    }
    return loss, stats


def _microbatch_gradients(
    context: RoundContext, run: RunState, batch: TransitionBatch
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backward of ``batch``'s loss / accum, added to the LoRA gradients already accumulated.

    The rows are computed in chunks of ``runtime.update_batch_size`` (one per rank by default), each rank its own
    chunks, every chunk's mean loss weighted by its share of the rows; the micro-batch's gradient is summed
    over ranks before it joins the accumulated ones, so N ranks add the same numbers in the same order as
    one process with one chunk per rank. Returns [ranks with a non-finite loss, *stats] agreed over ranks,
    and a non-finite loss of this rank (else None)."""
    config, ranks, device = context.config, context.ranks, context.device
    accumulated = [parameter.grad for parameter in run.lora_params]
    for parameter in run.lora_params:
        parameter.grad = None
    local = torch.zeros(1 + len(_MICRO_STATS), device=device)
    bad_loss = None
    for rows in ranks.chunks(len(batch), config.runtime.update_batch_size):
        loss, stats = _policy_microbatch(context, batch.rows(rows).to(device))
        share = len(rows) / len(batch)
        values = [(~torch.isfinite(loss)).float(), *(stats[k].float() * share for k in _MICRO_STATS)]
        local += torch.stack([value.to(device) for value in values])
        if not torch.isfinite(loss):
            bad_loss = loss.detach()
            continue
        run.scaler.scale(loss * share / config.policy.accum).backward()
    ranks.sum_gradients(run.lora_params)
    for parameter, earlier in zip(run.lora_params, accumulated):
        if earlier is not None:
            parameter.grad = earlier if parameter.grad is None else earlier + parameter.grad
    return ranks.sum(local), bad_loss


def _policy_step(
    context: RoundContext, run: RunState, generator: torch.Generator
) -> tuple[str | None, float, list[dict[str, torch.Tensor]]]:
    """One optimiser step over ``accum`` micro-batches; returns (problem or None, grad norm, stats)."""
    config, ranks = context.config, context.ranks
    run.optimizer.zero_grad(set_to_none=True)
    micro_stats: list[dict[str, torch.Tensor]] = []
    for _ in range(config.policy.accum):
        batch = run.buffer.sample(config.policy.p_batch, generator)
        agreed, bad_loss = _microbatch_gradients(context, run, batch)
        if agreed[0] > 0:  # every rank skips the step together
            run.optimizer.zero_grad(set_to_none=True)
            value = "" if bad_loss is None else f" ({bad_loss.item()})"
            where = "" if not ranks.distributed else f" on {int(agreed[0])} chunk(s) of the ranks"
            return f"non-finite loss{value}{where}", float("nan"), []
        micro_stats.append(dict(zip(_MICRO_STATS, agreed[1:])))
    run.scaler.unscale_(run.optimizer)  # true gradients before the norm (no-op unless fp16)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.lora_params, config.policy.max_grad_norm))
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


def policy_steps(context: RoundContext, run: RunState, round_number: int) -> dict[str, float]:
    """Step 5: ``policy.p_step`` policy steps; a step with a non-finite loss or gradient is skipped and counted."""
    config = context.config
    stats: dict[str, list[float]] = {"policy_loss": [], "kl_penalty": [], "ratio_dev": [], "clip_fraction": []}
    grad_norms, skipped = [], 0
    if len(run.buffer):
        context.scheduler.set_timesteps(config.sampler.num_inference_steps)
        generator = stream_generator(config.seed, round_number, POLICY_STREAM)
        with half_weights(context.unet, context.precision):  # forward and backward passes alike
            for step in range(config.policy.p_step):
                problem, grad_norm, micro_stats = _policy_step(context, run, generator)
                if problem is not None:
                    skipped += 1
                    if context.ranks.is_main:
                        logger.warning("round %d, policy step %d: %s; step skipped, LoRA unchanged",
                                       round_number, step + 1, problem)
                    continue
                grad_norms.append(grad_norm)
                for micro in micro_stats:
                    for key, value in micro.items():
                        stats[key].append(float(value))
    return {**{key: mean_or_nan(values) for key, values in stats.items()}, "grad_norm": mean_or_nan(grad_norms),
            "skipped_steps": skipped}


def kl_report(context: RoundContext, trajectory: Trajectory) -> float:
    """The exact KL bound (nats) averaged over the round's first ``runtime.kl_report_trajectories`` trajectories
    (shared between ranks)."""
    config, ranks = context.config, context.ranks
    if config.runtime.kl_report_trajectories == 0:
        return float("nan")
    share = ranks.shard(min(config.runtime.kl_report_trajectories, trajectory.batch_size))
    bounds = []
    if len(share):
        with diffusion_passes(context.unet, context.precision):
            bounds = [trajectory_kl_bound(
                context.diffusion_unet, context.scheduler, trajectory.subset(share) if ranks.distributed else trajectory,
                num_trajectories=len(share), chunk_size=config.sample_chunk(),
            ).cpu()]
    return float(torch.cat(ranks.gather(bounds)).mean())


def rescoring_log_ratios(context: RoundContext, trajectory: Trajectory) -> torch.Tensor:
    """|log ρ| of every transition of ``trajectory``, (B·T,): each rescored by :func:`rescore` in the update's
    micro-batches (``policy.p_batch``, in chunks of ``runtime.update_batch_size``), with gradients recorded as
    the update records them, under the current weights. For a round the current policy sampled, all zeros
    when the ratio is exact (``python -m dpok.bench``: ``first_update_max_abs_log_ratio``)."""
    config = context.config
    buffer = TransitionBuffer(trajectory.batch_size * trajectory.num_steps)
    buffer.push(trajectory, np.zeros(trajectory.batch_size))
    context.scheduler.set_timesteps(config.sampler.num_inference_steps)
    gaps = []
    with half_weights(context.unet, context.precision):
        for start in range(0, len(buffer), config.policy.p_batch):
            batch = buffer.get(torch.arange(start, min(start + config.policy.p_batch, len(buffer))))
            for rows in context.ranks.chunks(len(batch), config.runtime.update_batch_size):
                part = batch.rows(rows).to(context.device)
                _, log_prob = rescore(context, part)
                gaps.append((log_prob.detach() - part.log_probs).abs().cpu())
    return torch.cat(gaps)


__all__ = ["kl_report", "mean_or_nan", "policy_steps", "rescore", "rescoring_log_ratios", "step_weights"]
