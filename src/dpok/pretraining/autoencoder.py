"""Stage 1: the image autoencoder (32×32×3 ↔ 8×8×4) and the latent scaling factor."""

from __future__ import annotations

import copy

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from dpok.models import build_autoencoder
from dpok.pretraining.config import AutoencoderConfig
from dpok.pretraining.schedule import warmup_cosine


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [−1, 1], the range diffusers' VAEs work in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_autoencoder(
    images: np.ndarray, config: AutoencoderConfig, seed: int, progress: bool = True
) -> tuple[AutoencoderKL, list[dict[str, float]]]:
    """Train an ``AutoencoderKL`` on ``images``: L1 (or MSE) reconstruction + a tiny KL term."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = build_autoencoder({"sample_size": images.shape[1], **config.architecture})
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    lr_schedule = warmup_cosine(optimizer, config.steps, warmup=max(1, config.steps // 20))
    data = to_model_range(images)
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.steps), desc="autoencoder", disable=not progress, mininterval=2)
    for step in bar:
        batch = data[torch.randint(len(data), (config.batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        mse = torch.nn.functional.mse_loss(reconstruction, batch)
        if config.reconstruction_loss == "l1":
            reconstruction_loss = torch.nn.functional.l1_loss(reconstruction, batch)
        else:
            reconstruction_loss = mse
        kl = posterior.kl().mean() / batch[0].numel()
        loss = reconstruction_loss + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        if step % 10 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": float(loss), "mse": float(mse), "kl": float(kl)})
            bar.set_postfix(mse=f"{float(mse):.4f}")
    vae.eval()
    vae.requires_grad_(False)
    return vae, history


def refine_decoder(
    vae: AutoencoderKL, images: np.ndarray, config: AutoencoderConfig, seed: int, progress: bool = True
) -> tuple[AutoencoderKL, list[dict[str, float]]]:
    """Fine-tune the decoder only, on noisy latents of ``images``; returns a new VAE and the loss history.

    The denoiser's samples are never exactly the encoder's latents, and a decoder that has only seen
    exact latents turns the difference into soft, off-palette edges. Training it to reconstruct the clean
    image from ``latent + refine_latent_noise · std(latents) · N(0, I)`` makes it snap to clean renders.
    The encoder is frozen, so the latent space, its scaling factor and a denoiser trained on it stay valid.
    """
    refined = copy.deepcopy(vae)
    refined.requires_grad_(False)
    trainable = [*refined.decoder.parameters(), *refined.post_quant_conv.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    latents = encode_latents(refined, images)
    noise_std = config.refine_latent_noise * float(latents.std())
    data = to_model_range(images)
    optimizer = torch.optim.AdamW(trainable, lr=config.refine_learning_rate, weight_decay=0.0)
    steps = config.refine_decoder_steps
    lr_schedule = warmup_cosine(optimizer, steps, warmup=max(1, steps // 20))
    refined.train()
    history: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc="decoder refinement", disable=not progress, mininterval=2)
    for step in bar:
        index = torch.randint(len(data), (config.batch_size,), generator=generator)
        clean = latents[index]
        reconstruction = refined.decode(clean + noise_std * torch.randn(clean.shape, generator=generator)).sample
        loss = torch.nn.functional.l1_loss(reconstruction, data[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        lr_schedule.step()
        if step % 10 == 0 or step == steps - 1:
            history.append({"step": step, "l1": float(loss.detach())})
            bar.set_postfix(l1=f"{float(loss.detach()):.4f}")
    refined.eval()
    refined.requires_grad_(False)
    return refined, history


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Posterior means of ``images`` (unscaled latents), used as the denoiser's cached training set."""
    chunks = [
        vae.encode(to_model_range(images[i : i + batch_size])).latent_dist.mode()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents, so scaled latents have unit variance (SD's ``scaling_factor``)."""
    return float(1.0 / latents.float().std())
