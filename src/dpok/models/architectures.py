"""Component builders with Stable Diffusion's structure, from plain config dictionaries.

The shapes-world base model (``pretrain`` pipeline) and the tiny random-weight pipelines used in tests
are both built here, so that the RL code path is the same one Stable Diffusion v1.5 takes:
``AutoencoderKL`` + ``UNet2DConditionModel`` with cross-attention + ``CLIPTextModel`` + ``CLIPTokenizer``
+ ``DDIMScheduler``, assembled into a stock ``StableDiffusionPipeline``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dpok.models.tokenizer import BOS, EOS


def build_autoencoder(config: dict[str, Any]) -> AutoencoderKL:
    """``AutoencoderKL`` from keyword arguments (see diffusers); defaults give 32×32×3 ↔ 8×8×4."""
    defaults = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )
    merged = {**defaults, **config}
    n_blocks = len(merged["block_out_channels"])
    merged.setdefault("down_block_types", ("DownEncoderBlock2D",) * n_blocks)
    merged.setdefault("up_block_types", ("UpDecoderBlock2D",) * n_blocks)
    merged["block_out_channels"] = tuple(merged["block_out_channels"])
    return AutoencoderKL(**merged)


def build_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    """``UNet2DConditionModel`` (ε-prediction on latents) from keyword arguments."""
    defaults = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    merged = {**defaults, **config}
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        merged[key] = tuple(merged[key])
    return UNet2DConditionModel(**merged)


def build_text_encoder(config: dict[str, Any], tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A small ``CLIPTextModel`` sized to ``tokenizer`` (vocabulary and maximum length)."""
    defaults = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    merged = {**defaults, **config}
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=merged["hidden_size"],
        **merged,
    )
    return CLIPTextModel(text_config)


def build_ddim_scheduler(config: dict[str, Any] | None = None) -> DDIMScheduler:
    """Stable Diffusion's DDIM settings: scaled-linear betas, no sample clipping, and
    ``set_alpha_to_one=False`` with ``steps_offset=1`` so the last step keeps σ_t > 0 (docs/algorithm.md §2)."""
    defaults = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    return DDIMScheduler(**{**defaults, **(config or {})})


def assemble_pipeline(
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler: DDIMScheduler,
) -> StableDiffusionPipeline:
    """A stock ``StableDiffusionPipeline`` without safety checker or feature extractor."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(seed: int = 0, words: tuple[str, ...] | None = None) -> StableDiffusionPipeline:
    """A tiny random-weight SD-architecture pipeline (16×16 images, 4×4×4 latents) for tests."""
    from dpok.models.tokenizer import build_word_tokenizer

    words = words or ("a", "red", "green", "blue", "circle", "square", "cat", "dog", "and", "on", "the", "left")
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(words, model_max_length=12)
    vae = build_autoencoder(dict(block_out_channels=(8, 16, 16), norm_num_groups=8, sample_size=16))
    unet = build_unet(
        dict(sample_size=4, block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=32,
             attention_head_dim=8, norm_num_groups=8)
    )
    text_encoder = build_text_encoder(
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2), tokenizer
    )
    return assemble_pipeline(vae, unet, text_encoder, tokenizer, build_ddim_scheduler())
