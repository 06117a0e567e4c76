"""Thin nodes over :mod:`dpok.evaluation` (sampling plan, lazy scored samples, manifest)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from diffusers import StableDiffusionPipeline
from PIL import Image

from dpok.evaluation import LazyScoredSamples, SamplingConfig, derive_seeds, sampling_plan
from dpok.evaluation.manifest import finish_sample_set
from dpok.evaluation.sampling import pipeline_sampler, score_functions

logger = logging.getLogger(__name__)


def sample_pretrained_images(
    base_model: StableDiffusionPipeline, prompts: pd.DataFrame, params: dict[str, Any], sampler: dict[str, Any]
) -> tuple[dict[str, Callable[[], Image.Image]], LazyScoredSamples]:
    """Plan N seeded images per prompt; they are drawn and scored batch by batch as the catalog saves them."""
    started = time.perf_counter()
    config = SamplingConfig.from_params(params, sampler)
    score_fns = score_functions({**config.rewards, **config.quality})
    plan = sampling_plan(prompts, derive_seeds(config.seed, config.images_per_prompt))
    sampler = pipeline_sampler(
        base_model, num_inference_steps=config.sampler.num_inference_steps,
        guidance_scale=config.sampler.guidance_scale, eta=config.sampler.eta, device=config.device,
    )
    samples = LazyScoredSamples(plan, sampler, score_fns, config.batch_size, started=started)
    logger.info("Base model: %d prompts × %d seeds = %d images in batches of %d, scored with %s",
                plan["prompt"].nunique(), config.images_per_prompt, len(plan), config.batch_size, list(score_fns))
    return samples.partitions(), samples


def write_pretrained_manifest(
    pretrained_samples: dict[str, Any], samples: LazyScoredSamples, params: dict[str, Any], sampler: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Once the PNGs are written: the manifest, the sampling summary (settings, timing, score means)
    and the same numbers for MLflow."""
    config = SamplingConfig.from_params(params, sampler)
    return finish_sample_set(
        samples, pretrained_samples, config.sampler_settings(), config.score_kinds(), "pretrained", "Base-model"
    )
