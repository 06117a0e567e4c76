"""Negative-aware fine-tuning on the forward process (DiffusionNFT; Zheng et al., 2025, arXiv 2509.16117):
the update of ``policy.objective: nft``, an alternative to DPOK's per-step clipped surrogate.

DPOK's surrogate trains the policy through the log-probabilities of the sampler's own steps, whose
gradient scale |c_t|/σ_t gives SD's last steps almost all of the weight while the layout is decided in the
first ones (docs/algorithm.md §5). DiffusionNFT needs neither log-probabilities nor the trajectory: the
round's clean images x_0 are noised again by the forward process, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, at a step t
drawn uniformly from the sampler's trained steps, and the model is regressed towards or away from each
image by how good it was. With ε_old the prediction of the policy that drew the round (fixed for the
round), ε_θ the trained one, λ the strength (``policy.nft_strength``) and r ∈ [0, 1] the image's
"optimality" (its group-standardised advantage A mapped by r = ½ + ½·clip(A / c, −1, 1), c =
``policy.nft_advantage_clip``):

    ε⁺ = (1 − λ)·ε_old + λ·ε_θ        (the implicit positive policy)
    ε⁻ = (1 + λ)·ε_old − λ·ε_θ        (the implicit negative policy)
    L  = r·‖ε⁺ − ε‖² + (1 − r)·‖ε⁻ − ε‖²

Both terms are convex in ε_θ, so every sample has a bounded target (:func:`nft_target`),
ε_θ* = ε_old + (2r − 1)/λ · (ε − ε_old): an average image (r = ½) keeps the prediction where it was, a good
one pulls it towards denoising to that image, a bad one pushes it away — by at most 1/λ of the way, however
large the advantage (no ratio to clip, nothing to explode). Every step t gets the same weight.

The prediction trained is the guided one the sampler uses, ε̄ = ε(∅) + w·(ε(z) − ε(∅)), so what improves
is the policy that is evaluated. DPOK's KL regulariser to the pretrained model is kept as β·‖ε̄_θ − ε̄_pre‖²
on the same x_t (``kl.weight``; the ``eps_mse`` form on forward-process samples). The value function is
not used: the group mean is the baseline (``advantage.normalisation``: group or per_prompt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dpok.rl.context import RoundContext
from dpok.rl.kl import eps_mse, reference_model
from dpok.rl.precision import autocast, half_weights
from dpok.rl.rollout import stream_generator
from dpok.rl.sampling import Trajectory, guided_noise_prediction
from dpok.rl.update import mean_or_nan

if TYPE_CHECKING:
    from dpok.rl.state import RunState

logger = logging.getLogger(__name__)

NFT_STREAM = 7  # a random stream of its own: the draws of (image, step, ε) of round k


def optimality_probability(advantage: torch.Tensor, clip: float) -> torch.Tensor:
    """r = ½ + ½·clip(A / c, −1, 1): 1 for a clearly good image, 0 for a clearly bad one, ½ for an average one."""
    if clip <= 0:
        raise ValueError(f"the advantage clip must be > 0, got {clip!r}")
    return 0.5 + 0.5 * (advantage / clip).clamp(-1.0, 1.0)


def nft_loss(
    model_pred: torch.Tensor, old_pred: torch.Tensor, noise: torch.Tensor, optimality: torch.Tensor, strength: float
) -> torch.Tensor:
    """Per-sample r·‖ε⁺ − ε‖² + (1 − r)·‖ε⁻ − ε‖² (means over the latent's elements), shape (B,).

    ``model_pred`` ε_θ, ``old_pred`` ε_old (no gradient flows into it), ``noise`` ε: (B, C, H, W);
    ``optimality`` r: (B,); ``strength`` λ > 0."""
    old = old_pred.detach().float()
    positive = (1 - strength) * old + strength * model_pred.float()
    negative = (1 + strength) * old - strength * model_pred.float()
    r = optimality.to(model_pred.device, torch.float32)
    return r * eps_mse(positive, noise) + (1 - r) * eps_mse(negative, noise)


def nft_target(old_pred: torch.Tensor, noise: torch.Tensor, optimality: torch.Tensor, strength: float) -> torch.Tensor:
    """The ε_θ that minimises :func:`nft_loss` for each sample: ε_old + (2r − 1)/λ · (ε − ε_old)."""
    r = optimality.to(old_pred.dtype).view(-1, *([1] * (old_pred.ndim - 1)))
    return old_pred + (2 * r - 1) / strength * (noise - old_pred)


@dataclass
class ForwardSamples:
    """One policy step's draws: which image, at which trained step, with which ε; and ε̄_old there."""

    image: torch.Tensor  # (N,) indices into the round's kept images
    timesteps: torch.Tensor  # (N,) scheduler timesteps
    noise: torch.Tensor  # (N, C, H, W)
    old_pred: list[torch.Tensor]  # this rank's chunks of each micro-batch, in order


def _draw(generator: torch.Generator, n_images: int, timesteps: torch.Tensor, rows: int, shape) -> tuple:
    image = torch.randint(n_images, (rows,), generator=generator)
    step = torch.randint(len(timesteps), (rows,), generator=generator)
    noise = torch.randn((rows, *shape), generator=generator)
    return image, timesteps[step], noise


def _micro_batches(config, ranks) -> list[list[torch.Tensor]]:
    """Per micro-batch of a step's ``p_batch × accum`` draws, this rank's chunks of it as row indices (chunked
    as the clipped ratio's update chunks, ``dpok.rl.distributed.Ranks.chunks``)."""
    p_batch = config.policy.p_batch
    return [[torch.arange(micro * p_batch + chunk.start, micro * p_batch + chunk.stop)
             for chunk in ranks.chunks(p_batch, config.runtime.update_batch_size)]
            for micro in range(config.policy.accum)]


def nft_update(
    context: RoundContext, run: RunState, round_number: int, trajectory: Trajectory, advantage: np.ndarray,
    keep: np.ndarray,
) -> dict[str, float]:
    """The round's ``policy.p_step`` steps of :func:`nft_loss` (+ β·KL) on its images with ``keep`` (the rest
    belong to groups whose rewards were all equal: r = ½ for each, nothing to learn). Each step draws
    ``p_batch × accum`` (image, step, ε) triples; ε̄_old for all of them is computed before the first step,
    under the weights that sampled the round. Returns the round's policy metrics (the update's keys of
    :data:`dpok.rl.trainer.METRIC_NAMES`)."""
    config, ranks, device = context.config, context.ranks, context.device
    policy = config.policy
    nan = float("nan")
    result = {"policy_loss": nan, "kl_penalty": nan, "ratio_dev": nan, "clip_fraction": nan, "grad_norm": nan,
              "skipped_steps": 0}
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return result
    x0 = trajectory.latents[kept, -1].float().cpu()
    cond = trajectory.prompt_embeds[kept]
    uncond = None if trajectory.negative_prompt_embeds is None else trajectory.negative_prompt_embeds[kept]
    optimality = optimality_probability(torch.as_tensor(advantage[kept], dtype=torch.float32),
                                        policy.nft_advantage_clip)
    scheduler = context.scheduler
    scheduler.set_timesteps(config.sampler.num_inference_steps)
    first, stop = config.train_steps()
    timesteps = scheduler.timesteps[first:stop].cpu()
    generator = stream_generator(config.seed, round_number, NFT_STREAM)
    rows = policy.p_batch * policy.accum
    micro_batches = _micro_batches(config, ranks)
    alphas = scheduler.alphas_cumprod.cpu()

    def forward_inputs(draw_image, draw_t, noise, chunk):
        a = alphas[draw_t[chunk]].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0[draw_image[chunk]] + (1 - a).sqrt() * noise[chunk]
        index = draw_image[chunk].to(cond.device)
        return (x_t.to(device), draw_t[chunk].to(device), cond[index].to(device),
                None if uncond is None else uncond[index].to(device))

    def predict(x_t, t, c, u):
        with autocast(context.precision):
            return guided_noise_prediction(context.diffusion_unet, x_t, t, c, u, config.sampler.guidance_scale)

    stats: dict[str, list[float]] = {"policy_loss": [], "kl_penalty": []}
    grad_norms, skipped = [], 0
    with half_weights(context.unet, context.precision):
        steps = []
        with torch.no_grad():  # ε̄_old: the sampling policy's prediction, fixed for the round
            for _ in range(policy.p_step):
                image, t, noise = _draw(generator, len(kept), timesteps, rows, x0.shape[1:])
                old = [predict(*forward_inputs(image, t, noise, index)).float()
                       for chunks in micro_batches for index in chunks]
                steps.append(ForwardSamples(image, t, noise, old))
        for step_number, draws in enumerate(steps, start=1):
            run.optimizer.zero_grad(set_to_none=True)
            local = torch.zeros(3, device=device)  # [non-finite losses, nft loss, kl]
            old_chunks = iter(draws.old_pred)
            for chunks in micro_batches:
                accumulated = [p.grad for p in run.lora_params]
                for p in run.lora_params:
                    p.grad = None
                for index in chunks:
                    x_t, t, c, u = forward_inputs(draws.image, draws.timesteps, draws.noise, index)
                    old = next(old_chunks)
                    model_pred = predict(x_t, t, c, u)
                    loss = nft_loss(model_pred, old, draws.noise[index].to(device),
                                    optimality[draws.image[index]], policy.nft_strength).mean()
                    kl = torch.zeros((), device=device)
                    if config.kl.weight > 0:
                        with torch.no_grad(), reference_model(context.unet):
                            reference = predict(x_t, t, c, u)
                        kl = eps_mse(model_pred, reference).mean()
                    total = loss + config.kl.weight * kl
                    share = len(index) / policy.p_batch
                    local += torch.stack([(~torch.isfinite(total)).float(), loss.detach() * share,
                                          kl.detach() * share]).to(device)
                    if torch.isfinite(total):
                        run.scaler.scale(total * share / policy.accum).backward()
                ranks.sum_gradients(run.lora_params)
                for p, earlier in zip(run.lora_params, accumulated):
                    if earlier is not None:
                        p.grad = earlier if p.grad is None else earlier + p.grad
                agreed = ranks.sum(local)
                local.zero_()
                if agreed[0] > 0:
                    break
                stats["policy_loss"].append(float(agreed[1]))
                if config.kl.weight > 0:
                    stats["kl_penalty"].append(float(agreed[2]))
            problem = "non-finite loss" if agreed[0] > 0 else None
            if problem is None:
                run.scaler.unscale_(run.optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(run.lora_params, policy.max_grad_norm))
                if np.isfinite(grad_norm):
                    run.scaler.step(run.optimizer)
                    grad_norms.append(grad_norm)
                else:
                    problem = f"non-finite gradient norm ({grad_norm})"
                run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            if problem is not None:
                skipped += 1
                if ranks.is_main:
                    logger.warning("round %d, NFT step %d: %s; step skipped, LoRA unchanged", round_number,
                                   step_number, problem)
    result.update(policy_loss=mean_or_nan(stats["policy_loss"]), kl_penalty=mean_or_nan(stats["kl_penalty"]),
                  grad_norm=mean_or_nan(grad_norms), skipped_steps=skipped)
    return result


__all__ = ["NFT_STREAM", "nft_loss", "nft_target", "nft_update", "optimality_probability"]
