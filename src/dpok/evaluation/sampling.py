"""Seeded image generation with a stock pipeline call, and the sampler and scores the evaluation runs.

:func:`iter_seeded_images` uses one torch generator per image, so an image depends only on (prompt,
seed) — not on batch size or order — and the base and fine-tuned models can be compared on exactly the
same noise. :func:`pipeline_sampler` wraps it as the ``fn(prompts, seeds) -> uint8 images`` that
:class:`~dpok.evaluation.manifest.LazyScoredSamples` calls, and :func:`score_functions` builds the
score functions it applies to each batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from dpok.devices import resolve_device
from dpok.evaluation.manifest import SampleBatchFn, ScoreFn
from dpok.images import images_to_uint8


def iter_seeded_images(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    eta: float = 1.0,
    batch_size: int = 32,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_index, uint8 images (b, H, W, 3))`` batch by batch (memory stays flat)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        with torch.no_grad():
            images = pipeline(
                batch_prompts,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                eta=eta,
                generator=generators,
                output_type="np",
            ).images
        yield start, images_to_uint8(images)


def generate_seeded_images(pipeline: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> np.ndarray:
    """All images of :func:`iter_seeded_images` in one array (for small sets)."""
    chunks = [images for _, images in iter_seeded_images(pipeline, prompts, seeds, **kwargs)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0, 0, 3), np.uint8)


def pipeline_sampler(
    pipeline: StableDiffusionPipeline,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    eta: float,
    device: str = "auto",
) -> SampleBatchFn:
    """Draw one batch with :func:`iter_seeded_images` (one CPU generator per image, so an image depends
    only on its prompt and seed, on any device and at any batch size)."""
    pipeline.to(resolve_device(device))
    pipeline.set_progress_bar_config(disable=True)

    def sample_batch(prompts: list[str], seeds: list[int]):
        (_, images), = iter_seeded_images(
            pipeline, prompts, seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            eta=eta, batch_size=len(prompts),
        )
        return images

    return sample_batch


def score_functions(score_options: dict[str, dict]) -> dict[str, ScoreFn]:
    """``{name: reward fn}`` from ``{name: factory options}`` through the :mod:`dpok.rewards` registry
    (unknown names fail here, before any image is drawn, with the list of known ones)."""
    from dpok.rewards import get_reward_fn

    return {name: get_reward_fn(name, **options) for name, options in score_options.items()}
