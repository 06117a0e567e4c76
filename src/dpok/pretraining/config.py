"""Typed parameters of the ``pretrain`` pipeline (``conf/base/parameters_pretrain.yml``, the one home of
their values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from dpok.config import Settings, from_mapping

RECONSTRUCTION_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class AutoencoderConfig(Settings):
    """AutoencoderKL training.

    Attributes:
        architecture: Keyword arguments of ``diffusers.AutoencoderKL`` (see dpok.models.build_autoencoder).
        steps: Optimiser steps.
        batch_size: Images per step.
        learning_rate: AdamW learning rate (cosine decay to 10 %).
        kl_weight: Weight of the KL to N(0, I) on the latent posterior; tiny, as in SD's VAE.
        reconstruction_loss: "l1" or "mse". L1 gives crisper edges: under uncertainty about where an
            edge lies, MSE's optimum is a blend of the two colours, L1's is one of them.
        refine_decoder_steps: Steps of a second stage that fine-tunes the decoder alone on noisy latents
            (dpok.pretraining.refine_decoder); 0 skips it.
        refine_latent_noise: Std of that noise, in units of the latents' std.
        refine_learning_rate: AdamW learning rate of that stage.
    """

    KEY_PATH: ClassVar[str] = "pretrain.autoencoder"

    architecture: dict[str, Any]
    steps: int
    batch_size: int
    learning_rate: float
    kl_weight: float
    reconstruction_loss: str
    refine_decoder_steps: int
    refine_latent_noise: float
    refine_learning_rate: float

    def __post_init__(self) -> None:
        self.integer("steps", 1)
        self.integer("batch_size", 1)
        self.number("learning_rate", gt=0)
        self.number("kl_weight", ge=0)
        self.integer("refine_decoder_steps", 0)
        self.number("refine_latent_noise", ge=0)
        self.number("refine_learning_rate", gt=0)
        self.choice("reconstruction_loss", RECONSTRUCTION_LOSSES)


@dataclass(frozen=True)
class DenoiserConfig(Settings):
    """UNet + text encoder training (ε-prediction on cached latents).

    Attributes:
        unet: Keyword arguments of ``diffusers.UNet2DConditionModel``.
        text_encoder: Size of the ``CLIPTextModel`` (hidden_size, intermediate_size, layers, heads).
        steps: Optimiser steps.
        batch_size: Latents per step.
        learning_rate: AdamW learning rate (linear warm-up, cosine decay to 10 %).
        caption_dropout: Share of captions replaced by "" so the model also learns the unconditional
            prediction that classifier-free guidance needs.
        ema_decay: Decay of the exponential moving average of the weights that are saved (0 = no EMA).
    """

    KEY_PATH: ClassVar[str] = "pretrain.denoiser"

    unet: dict[str, Any]
    text_encoder: dict[str, Any]
    steps: int
    batch_size: int
    learning_rate: float
    caption_dropout: float
    ema_decay: float

    def __post_init__(self) -> None:
        self.integer("steps", 1)
        self.integer("batch_size", 1)
        self.number("learning_rate", gt=0)
        self.number("caption_dropout", ge=0, lt=1)
        self.number("ema_decay", ge=0, lt=1)


@dataclass(frozen=True)
class PretrainConfig(Settings):
    """All of ``pretrain``.

    Attributes:
        seed: Seeds the dataset, initialisation and training.
        image_size: Side of the square images in pixels.
        num_images: Rendered (caption, image) pairs.
        skew: The training caption distribution (``dpok.world.CaptionSkew`` fields).
        autoencoder: See :class:`AutoencoderConfig`.
        denoiser: See :class:`DenoiserConfig`.
        scheduler: ``DDIMScheduler`` keyword arguments (the noise schedule is shared by training).
        tokenizer_max_length: Tokens per prompt including start/end tokens.
    """

    KEY_PATH: ClassVar[str] = "pretrain"

    seed: int
    image_size: int
    num_images: int
    skew: dict[str, Any]
    autoencoder: AutoencoderConfig
    denoiser: DenoiserConfig
    scheduler: dict[str, Any]
    tokenizer_max_length: int

    def __post_init__(self) -> None:
        self.integer("seed", 0)
        self.integer("num_images", 1)
        self.integer("image_size", 8)
        if self.image_size % 8:
            self.fail("image_size", "a multiple of 8")
        self.integer("tokenizer_max_length", 3)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> PretrainConfig:
        """Build from the ``pretrain`` parameters (conf/base's parameters_pretrain.yml holds every key)."""
        return from_mapping(cls, params, cls.KEY_PATH)
