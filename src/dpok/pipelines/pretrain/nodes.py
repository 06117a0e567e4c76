"""Thin nodes over :mod:`dpok.pretraining`, :mod:`dpok.world` and :mod:`dpok.evaluation`."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from dpok.config import SamplerConfig, from_mapping
from dpok.evaluation import curves_figure, image_grid
from dpok.evaluation.sampling import generate_seeded_images
from dpok.models import assemble_pipeline, build_ddim_scheduler, build_word_tokenizer
from dpok.pretraining import (
    PretrainConfig,
    encode_latents,
    latent_scaling_factor,
    refine_decoder,
    render_caption_dataset,
    train_autoencoder,
    train_denoiser,
)
from dpok.world import CaptionSkew, enumerate_prompts, judge, parse_prompt, quality, vocabulary

logger = logging.getLogger(__name__)


def validate_pretrain_params(params: dict[str, Any]) -> PretrainConfig:
    """Fail on a bad parameter before any rendering or training; the typed config the other nodes take."""
    config = PretrainConfig.from_dict(params)
    CaptionSkew.from_dict(config.skew)
    return config


def render_training_set(cfg: PretrainConfig) -> tuple[np.ndarray, list[str]]:
    start = time.perf_counter()
    images, captions = render_caption_dataset(
        cfg.num_images, CaptionSkew.from_dict(cfg.skew), seed=cfg.seed, image_size=cfg.image_size
    )
    counts = pd.Series(captions).value_counts()
    logger.info(
        "Rendered %d images over %d distinct captions in %.1f s (most frequent %d×, least %d×)",
        len(images), len(counts), time.perf_counter() - start, counts.max(), counts.min(),
    )
    return images, captions


def train_autoencoder_node(images: np.ndarray, cfg: PretrainConfig):
    start = time.perf_counter()
    vae, history = train_autoencoder(images, cfg.autoencoder, seed=cfg.seed)
    latents = encode_latents(vae, images)
    scaling = latent_scaling_factor(latents)
    vae.register_to_config(scaling_factor=scaling)
    logger.info(
        "Autoencoder: final MSE %.4f, latents %s, scaling factor %.4f (%.0f s)",
        history[-1]["mse"], tuple(latents.shape[1:]), scaling, time.perf_counter() - start,
    )
    return vae, latents * scaling, {"seconds": time.perf_counter() - start, "history": history}


def refine_decoder_node(vae, images: np.ndarray, cfg: PretrainConfig):
    """The decoder-only second stage (skipped when ``refine_decoder_steps`` is 0)."""
    if cfg.autoencoder.refine_decoder_steps == 0:
        return vae, {"seconds": 0.0, "history": []}
    start = time.perf_counter()
    refined, history = refine_decoder(vae, images, cfg.autoencoder, seed=cfg.seed)
    logger.info("Decoder refinement: final L1 %.4f (%.0f s)", history[-1]["l1"], time.perf_counter() - start)
    return refined, {"seconds": time.perf_counter() - start, "history": history}


def train_denoiser_node(latents: torch.Tensor, captions: list[str], cfg: PretrainConfig):
    start = time.perf_counter()
    tokenizer = build_word_tokenizer(vocabulary(), model_max_length=cfg.tokenizer_max_length)
    scheduler = build_ddim_scheduler(cfg.scheduler)
    unet, text_encoder, history = train_denoiser(
        latents, captions, tokenizer, dict(scheduler.config), cfg.denoiser, seed=cfg.seed
    )
    logger.info("Denoiser: final smoothed loss %.4f (%.0f s)", history[-1]["loss_smoothed"], time.perf_counter() - start)
    return unet, text_encoder, tokenizer, {"seconds": time.perf_counter() - start, "history": history}


def assemble_base_model(vae, unet, text_encoder, tokenizer, cfg: PretrainConfig) -> StableDiffusionPipeline:
    return assemble_pipeline(vae, unet, text_encoder, tokenizer, build_ddim_scheduler(cfg.scheduler))


def plot_pretraining(
    autoencoder_log: dict, decoder_log: dict, denoiser_log: dict
) -> tuple[Image.Image, dict[str, list[dict]]]:
    """Loss curves (PNG) and the same numbers as MLflow metric histories."""
    vae_h, decoder_h, unet_h = autoencoder_log["history"], decoder_log["history"], denoiser_log["history"]
    curves = {"autoencoder reconstruction MSE": ([h["step"] for h in vae_h], [h["mse"] for h in vae_h])}
    if decoder_h:
        curves["decoder refinement L1 (noisy latents)"] = ([h["step"] for h in decoder_h], [h["l1"] for h in decoder_h])
    curves["denoiser ε-MSE (smoothed)"] = ([h["step"] for h in unet_h], [h["loss_smoothed"] for h in unet_h])
    figure = curves_figure(
        curves,
        title="Pretraining the shapes-world base model",
        xlabel="step",
    )
    metrics = {
        "pretrain_autoencoder_mse": [{"step": h["step"], "value": h["mse"]} for h in vae_h],
        "pretrain_denoiser_loss": [{"step": h["step"], "value": h["loss_smoothed"]} for h in unet_h],
        "pretrain_decoder_refinement_l1": [{"step": h["step"], "value": h["l1"]} for h in decoder_h],
        "pretrain_autoencoder_seconds": [{"step": 0, "value": autoencoder_log["seconds"]}],
        "pretrain_decoder_refinement_seconds": [{"step": 0, "value": decoder_log["seconds"]}],
        "pretrain_denoiser_seconds": [{"step": 0, "value": denoiser_log["seconds"]}],
    }
    return figure, metrics


def report_base_model(
    pipeline: StableDiffusionPipeline, prompts: pd.DataFrame, config: PretrainConfig, report: dict[str, Any],
    sampler: dict[str, Any],
) -> tuple[Image.Image, dict[str, Any], pd.DataFrame]:
    """Judge and quality of the base model on fixed seeds, drawn with the shared sampler: per category and
    per rarity."""
    sampler = from_mapping(SamplerConfig, sampler, SamplerConfig.KEY_PATH)
    skew = CaptionSkew.from_dict(config.skew)
    table = prompts[["prompt", "category"]].copy()
    table["rarity"] = [skew.rarity(p) for p in table["prompt"]]
    rng = np.random.default_rng(report["seed"])
    common = [p for p in enumerate_prompts() if skew.rarity(p) == "common" and p not in set(table["prompt"])]
    extra = rng.choice(common, size=min(report["extra_common_prompts"], len(common)), replace=False)
    table = pd.concat(
        [table, pd.DataFrame({"prompt": extra, "category": [parse_prompt(p).category for p in extra], "rarity": "common"})],
        ignore_index=True,
    )
    n = report["seeds_per_prompt"]
    all_prompts = np.repeat(table["prompt"].to_numpy(), n).tolist()
    seeds = np.tile(np.arange(report["seed"], report["seed"] + n), len(table)).tolist()
    start = time.perf_counter()
    images = generate_seeded_images(
        pipeline, all_prompts, seeds,
        num_inference_steps=sampler.num_inference_steps, guidance_scale=sampler.guidance_scale, eta=sampler.eta,
        batch_size=report["batch_size"],
    )
    scores = pd.DataFrame(
        {
            "prompt": all_prompts,
            "seed": seeds,
            "judge": judge(images, all_prompts),
            "quality": quality(images),
        }
    ).merge(table, on="prompt")
    metrics = {
        "settings": {"seeds_per_prompt": report["seeds_per_prompt"], **sampler.to_dict()},
        "seconds_sampling": time.perf_counter() - start,
        "overall": scores[["judge", "quality"]].mean().to_dict(),
        "per_rarity": scores.groupby("rarity")[["judge", "quality"]].mean().to_dict("index"),
        "per_category": scores.groupby("category")[["judge", "quality"]].mean().to_dict("index"),
        "per_prompt": scores.groupby("prompt")[["judge", "quality"]].mean().to_dict("index"),
    }
    for rarity, values in metrics["per_rarity"].items():
        logger.info("Base model, %s prompts: judge %.3f, quality %.3f", rarity, values["judge"], values["quality"])
    show = min(n, 8)
    rows = [images[i * n : i * n + show] for i in range(len(table))]
    labels = [f"[{r}] {p}" for p, r in zip(table["prompt"], table["rarity"])]
    grid = image_grid(rows, row_labels=labels, label_width=300)
    return grid, metrics, scores
