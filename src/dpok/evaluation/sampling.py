"""Seeded image generation with a stock pipeline call: one torch generator per image, so an image
depends only on (prompt, seed) — not on batch size or order — and the base and fine-tuned models can be
compared on exactly the same noise."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline


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
        yield start, (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def generate_seeded_images(pipeline: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> np.ndarray:
    """All images of :func:`iter_seeded_images` in one array (for small sets)."""
    chunks = [images for _, images in iter_seeded_images(pipeline, prompts, seeds, **kwargs)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0, 0, 3), np.uint8)
