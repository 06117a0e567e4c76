"""Pretraining the shapes-world base model: a tiny latent diffusion model with Stable Diffusion's
structure, trained from scratch on rendered scenes with a skewed caption distribution.

Pure library code; the ``pretrain`` pipeline is a thin adapter. Stages:
1. :func:`render_caption_dataset` — captions drawn from the skewed distribution, scenes rendered.
2. :func:`train_autoencoder` — ``AutoencoderKL`` 32×32×3 ↔ 8×8×4, then :func:`latent_scaling_factor`;
   :func:`refine_decoder` then fine-tunes the decoder alone on noisy latents (crisper samples).
3. :func:`train_denoiser` — ``UNet2DConditionModel`` (ε-prediction) jointly with a small
   ``CLIPTextModel`` on cached latents, with caption dropout for classifier-free guidance and an EMA.
"""

from dpok.pretraining.autoencoder import encode_latents, latent_scaling_factor, refine_decoder, train_autoencoder
from dpok.pretraining.config import AutoencoderConfig, DenoiserConfig, PretrainConfig
from dpok.pretraining.dataset import render_caption_dataset
from dpok.pretraining.denoiser import train_denoiser

__all__ = [
    "AutoencoderConfig",
    "DenoiserConfig",
    "PretrainConfig",
    "encode_latents",
    "latent_scaling_factor",
    "refine_decoder",
    "render_caption_dataset",
    "train_autoencoder",
    "train_denoiser",
]
