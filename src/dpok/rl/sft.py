"""Reward-weighted supervised fine-tuning (SFT): the baseline DPOK is compared with (docs/algorithm.md §8).

Lee et al. (2023) fine-tune on samples of the pretrained model, each weighted by its reward; DPOK's paper
writes the objective with a KL regulariser to the pretrained model (the *supervised* KL, taken on the
pretrained model's samples, where DPOK's online KL is taken on the fine-tuned model's):

    min_θ  E_z E_{x_0 ~ p_pre(·|z)} [ −r(x_0, z) · log p_θ(x_0 | z) ]  +  γ · E_z [ KL(p_pre(·|z) ‖ p_θ(·|z)) ]

As in diffusion training, −log p_θ(x_0|z) is replaced by the denoising loss E_{t, ε} ‖ε_θ(x_t, t, z) − ε‖²
(x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, t uniform over the training timesteps), and the KL by its per-step bound
E_{t, ε} ‖ε_θ(x_t, t, z) − ε_pre(x_t, t, z)‖² on the same x_t. :func:`sft_loss` is that sum for one
batch; :func:`train_sft` draws the data set (``num_rounds × g_batch`` samples of the pretrained model, the
same prompts and sampler as a DPOK run of the same settings, so the same number of reward calls) and then
takes ``sft.steps`` AdamW steps on the same LoRA DPOK trains.

The sample set is drawn afresh on each run (no checkpoints: a run takes minutes on the shapes world).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from dpok.models.lora import lora_state_dict
from dpok.rl.config import FinetuneConfig, SFTConfig
from dpok.rl.context import RewardFn, check_inputs, prepare_pipeline
from dpok.rl.kl import reference_model, trajectory_kl_bound
from dpok.rl.rollout import diffusion_autocast, draw_prompts, sample_round, score, stream_generator
from dpok.rl.sampling import Trajectory, sample_trajectories
from dpok.rl.state import attach_trainable_lora

logger = logging.getLogger(__name__)

KEY_PATH = SFTConfig.KEY_PATH
# Random streams of SFT (the sample set reuses DPOK's round streams, so its round-1 samples are DPOK's).
_SFT_BATCH, _SFT_REPORT = 100, 101

SFT_METRIC_NAMES = ("round", "loss", "weighted_mse", "kl_mse", "grad_norm", "kl_bound_nats")
"""Columns of the SFT history, one row per optimiser step: ``round`` is the step number (so the history
plots like DPOK's), ``loss`` = ``weighted_mse`` + γ·``kl_mse``; ``kl_bound_nats``: DPOK's exact KL bound
on fresh samples of the fine-tuned model, every ``report_every`` steps (NaN in between)."""


def reward_weights(rewards: np.ndarray, offset: float) -> np.ndarray:
    """Each sample's weight r + offset; a negative weight would push the model towards the sample's
    opposite, so it is refused with what to set."""
    weights = np.asarray(rewards, dtype=np.float64) + offset
    if (weights < 0).any():
        raise ValueError(
            f"reward-weighted SFT needs rewards + {KEY_PATH}.reward_offset >= 0, but the lowest reward is "
            f"{float(np.min(rewards)):.4g} (offset {offset}); set {KEY_PATH}.reward_offset to at least "
            f"{float(-np.min(rewards)):.4g}"
        )
    return weights


def sft_loss(
    model_pred: torch.Tensor,
    noise: torch.Tensor,
    reference_pred: torch.Tensor | None,
    weights: torch.Tensor,
    kl_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean_i w_i·‖ε_θ,i − ε_i‖² + γ·mean_i ‖ε_θ,i − ε_pre,i‖², each norm a mean over the latent's elements.

    ``model_pred``, ``noise``, ``reference_pred``: (B, C, H, W); ``weights``: (B,). ``reference_pred`` may be
    None when ``kl.weight`` is 0. Returns the loss and its two terms (floats, for the history).
    """
    per_sample = lambda a, b: (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)  # noqa: E731
    weighted = (weights.to(model_pred.device, torch.float32) * per_sample(model_pred, noise)).mean()
    if kl_weight > 0:
        if reference_pred is None:
            raise ValueError("sft_loss: kl_weight > 0 needs the pretrained model's prediction")
        kl = per_sample(model_pred, reference_pred).mean()
    else:
        kl = torch.zeros((), device=model_pred.device)
    loss = weighted + kl_weight * kl
    return loss, {"weighted_mse": float(weighted.detach()), "kl_mse": float(kl.detach())}


@dataclass
class SampleSet:
    """The pretrained model's samples that SFT learns from: final latents, prompts and rewards."""

    latents: torch.Tensor  # x_0, (N, C, H, W), float32 on the CPU
    prompts: list[str]
    rewards: np.ndarray
    reward_log: list[list[Any]]  # [round, prompt, reward], as DPOK's


@torch.no_grad()
def sample_pretrained(pipeline, prompts: list[str], reward_fn: RewardFn, config: FinetuneConfig) -> SampleSet:
    """``num_rounds × g_batch`` samples of the pretrained model, drawn and scored as DPOK's rounds draw
    theirs (same prompt choice, groups and noise streams), without any update in between."""
    latents, drawn, rewards, log = [], [], [], []
    for round_number in tqdm(range(1, config.runtime.num_rounds + 1), desc="SFT: sampling the pretrained model"):
        round_prompts, groups = draw_prompts(prompts, config, round_number)
        with diffusion_autocast(config, pipeline.unet.device):
            trajectory = sample_round(pipeline, round_prompts, groups, config, round_number)
        scores = score(reward_fn, trajectory.images, round_prompts, round_number)
        latents.append(trajectory.latents[:, -1].float().cpu())
        drawn += round_prompts
        rewards.append(scores)
        log += [[round_number, p, float(r)] for p, r in zip(round_prompts, scores)]
    return SampleSet(torch.cat(latents), drawn, np.concatenate(rewards), log)


def _prompt_embeddings(pipeline, prompts: list[str]) -> tuple[list[str], torch.Tensor]:
    unique = sorted(set(prompts))
    with torch.no_grad():
        embeds, _ = pipeline.encode_prompt(unique, pipeline.unet.device, 1, False)
    return unique, embeds


def _kl_bound(pipeline, prompts: list[str], config: FinetuneConfig, step: int) -> float:
    """DPOK's exact KL bound on fresh samples of the current model (its report, for the comparison table)."""
    n = config.runtime.kl_report_trajectories
    if n == 0:
        return float("nan")
    chosen = [prompts[i] for i in torch.randint(
        len(prompts), (n,), generator=stream_generator(config.seed, step, _SFT_REPORT)).tolist()]
    generators = [stream_generator(config.seed, step, _SFT_REPORT, i) for i in range(n)]
    with torch.no_grad(), diffusion_autocast(config, pipeline.unet.device):
        trajectory: Trajectory = sample_trajectories(
            pipeline, chosen, num_inference_steps=config.sampler.num_inference_steps,
            guidance_scale=config.sampler.guidance_scale, eta=config.sampler.eta, generator=generators, output_type="latent",
        )
        bounds = trajectory_kl_bound(pipeline.unet, pipeline.scheduler, trajectory,
                                      chunk_size=config.sample_chunk())
    return float(bounds.mean())


def _sft_step(pipeline, data: SampleSet, embeds: torch.Tensor, index_of: dict[str, int], weights: torch.Tensor,
              noise_scheduler, optimizer, params, rl: FinetuneConfig, sft: SFTConfig, step: int) -> dict[str, float]:
    unet, device = pipeline.unet, pipeline.unet.device
    generator = stream_generator(rl.seed, step, _SFT_BATCH)
    picked = torch.randint(len(data.prompts), (sft.batch_size,), generator=generator)
    timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (sft.batch_size,), generator=generator)
    x0 = data.latents[picked]
    noise = torch.randn(x0.shape, generator=generator)
    x_t = noise_scheduler.add_noise(x0, noise, timesteps).to(device)
    timesteps, noise = timesteps.to(device), noise.to(device)
    text = embeds[[index_of[data.prompts[i]] for i in picked.tolist()]]
    with diffusion_autocast(rl, device):
        model_pred = unet(x_t.to(unet.dtype), timesteps, encoder_hidden_states=text).sample
        reference_pred = None
        if sft.kl_weight > 0:
            with torch.no_grad(), reference_model(unet) as reference:
                reference_pred = reference(x_t.to(unet.dtype), timesteps, encoder_hidden_states=text).sample
    loss, parts = sft_loss(model_pred, noise, reference_pred, weights[picked], sft.kl_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, rl.policy.max_grad_norm)
    optimizer.step()
    return {"loss": float(loss.detach()), **parts, "grad_norm": float(grad_norm)}


@dataclass
class SFTResult:
    """What :func:`train_sft` returns: one row per step (:data:`SFT_METRIC_NAMES`), the final LoRA and the
    scored sample set's ``[round, prompt, reward]`` rows."""

    history: list[dict[str, float]]
    lora_state: dict[str, torch.Tensor]
    reward_log: list[list[Any]]


def train_sft(
    pipeline, prompts: list[str], reward_fn: RewardFn, rl: FinetuneConfig, sft: SFTConfig, progress: bool = True
) -> SFTResult:
    """Reward-weighted SFT of a LoRA on ``pipeline.unet`` (modified in place: it gets the adapter)."""
    prompts = check_inputs(pipeline, prompts, rl)
    if getattr(pipeline.scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise ValueError("reward-weighted SFT trains ε-prediction models only (scheduler prediction_type)")
    prepare_pipeline(pipeline, rl)
    data = sample_pretrained(pipeline, prompts, reward_fn, rl)  # before the adapter exists: the pretrained model
    weights = torch.as_tensor(reward_weights(data.rewards, sft.reward_offset), dtype=torch.float32)
    logger.info(
        "SFT: %d samples of the pretrained model, reward %.4f ± %.4f; %d steps of %d, γ=%g",
        len(data.prompts), data.rewards.mean(), data.rewards.std(), sft.steps, sft.batch_size, sft.kl_weight,
    )
    params = attach_trainable_lora(pipeline.unet, rl)
    optimizer = torch.optim.AdamW(params, lr=rl.policy.learning_rate, weight_decay=rl.policy.adam_weight_decay)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    unique, embeds = _prompt_embeddings(pipeline, data.prompts)
    index_of = {p: i for i, p in enumerate(unique)}
    history = []
    for step in tqdm(range(1, sft.steps + 1), desc="SFT steps", disable=not progress):
        row = {"round": step, **_sft_step(pipeline, data, embeds, index_of, weights, noise_scheduler, optimizer,
                                          params, rl, sft, step)}
        report = step == sft.steps or (sft.report_every and step % sft.report_every == 0)
        row["kl_bound_nats"] = _kl_bound(pipeline, prompts, rl, step) if report else float("nan")
        history.append(row)
        if report:
            logger.info("SFT step %d/%d: loss %.4f (weighted %.4f, KL %.4g), KL bound %.4g nats", step, sft.steps,
                        row["loss"], row["weighted_mse"], row["kl_mse"], row["kl_bound_nats"])
    return SFTResult(history, {k: v.cpu() for k, v in lora_state_dict(pipeline.unet).items()}, data.reward_log)


__all__ = ["SFTConfig", "SFTResult", "SFT_METRIC_NAMES", "reward_weights", "sample_pretrained", "sft_loss", "train_sft"]
