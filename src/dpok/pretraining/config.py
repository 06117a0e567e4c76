"""Typed parameters of the ``pretrain`` pipeline (``conf/base/parameters_pretrain.yml``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dpok.config import check_keys, from_mapping


RECONSTRUCTION_LOSSES = ("l1", "mse")


def _positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{where}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class AutoencoderConfig:
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

    architecture: dict[str, Any] = field(default_factory=dict)
    steps: int = 800
    batch_size: int = 64
    learning_rate: float = 2e-3
    kl_weight: float = 1e-6
    reconstruction_loss: str = "l1"
    refine_decoder_steps: int = 0
    refine_latent_noise: float = 0.2
    refine_learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        _positive("pretrain.autoencoder", steps=self.steps, batch_size=self.batch_size, learning_rate=self.learning_rate)
        if self.kl_weight < 0:
            raise ValueError(f"pretrain.autoencoder.kl_weight must be >= 0, got {self.kl_weight}")
        if isinstance(self.refine_decoder_steps, bool) or not isinstance(self.refine_decoder_steps, int) or (
            self.refine_decoder_steps < 0
        ):
            raise ValueError(
                f"pretrain.autoencoder.refine_decoder_steps must be an integer >= 0, got {self.refine_decoder_steps!r}"
            )
        if not self.refine_latent_noise >= 0:
            raise ValueError(f"pretrain.autoencoder.refine_latent_noise must be >= 0, got {self.refine_latent_noise}")
        _positive("pretrain.autoencoder", refine_learning_rate=self.refine_learning_rate)
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"pretrain.autoencoder.reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, "
                f"got {self.reconstruction_loss!r}"
            )


@dataclass(frozen=True)
class DenoiserConfig:
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

    unet: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 5e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        _positive("pretrain.denoiser", steps=self.steps, batch_size=self.batch_size, learning_rate=self.learning_rate)
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"pretrain.denoiser.caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"pretrain.denoiser.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class PretrainConfig:
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

    seed: int = 0
    image_size: int = 32
    num_images: int = 20000
    skew: dict[str, Any] = field(default_factory=dict)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    scheduler: dict[str, Any] = field(default_factory=dict)
    tokenizer_max_length: int = 16

    def __post_init__(self) -> None:
        _positive("pretrain", num_images=self.num_images, image_size=self.image_size)
        if self.image_size % 8:
            raise ValueError(f"pretrain.image_size must be a multiple of 8, got {self.image_size}")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> PretrainConfig:
        params = check_keys(params, {f.name for f in fields(cls)}, "pretrain")
        if "autoencoder" in params:
            params["autoencoder"] = from_mapping(AutoencoderConfig, params["autoencoder"], "pretrain.autoencoder")
        if "denoiser" in params:
            params["denoiser"] = from_mapping(DenoiserConfig, params["denoiser"], "pretrain.denoiser")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
