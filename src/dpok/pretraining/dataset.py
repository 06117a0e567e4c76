"""The pretraining set: captions from the skewed distribution, each rendered as a random scene."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from dpok.world import CaptionSkew, caption_distribution, render, sample_scene


def render_caption_dataset(
    num_images: int, skew: CaptionSkew, seed: int, image_size: int = 32, progress: bool = True
) -> tuple[np.ndarray, list[str]]:
    """``num_images`` (image, caption) pairs: uint8 images (N, H, W, 3) and their captions.

    Captions are drawn i.i.d. from ``caption_distribution(skew)``, so rare prompts are rare and unseen
    prompts never appear.
    """
    rng = np.random.default_rng(seed)
    prompts, probs = caption_distribution(skew)
    picks = rng.choice(len(prompts), size=num_images, p=probs)
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    captions = [prompts[i] for i in picks]
    for i, caption in enumerate(tqdm(captions, desc="render", disable=not progress, mininterval=2)):
        images[i] = render(sample_scene(caption, rng, size=image_size))
    return images, captions
