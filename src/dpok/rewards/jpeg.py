"""JPEG compressibility: the prompt-free sanity reward of DDPO (Black et al., 2023).

A reward any image model can optimise without a reward model: smaller JPEG files mean simpler,
flatter images. Useful to check that an RL loop learns at all. Scores are per image:

- ``scaled=False`` (default, as in DDPO): ``-(JPEG bytes) / 1000``, the negative size in kB.
- ``scaled=True``: ``1 - (JPEG bytes) / (H * W * 3)``, the fraction of the raw RGB size the JPEG saves,
  clipped to [0, 1]; comparable across image sizes. At 32x32 the JPEG headers alone take ~0.6 kB of
  the 3 kB raw size: clean renders score about 0.65, uniform noise about 0.4.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from dpok.images import to_image_batch
from dpok.rewards.registry import RewardFn, register_reward


def jpeg_size_bytes(image: np.ndarray, quality: int) -> int:
    """Bytes of ``image`` (``(H, W, 3)`` uint8) saved as JPEG at ``quality`` by Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell()


@register_reward("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95, scaled: bool = False) -> RewardFn:
    """Build the JPEG-compressibility reward (module docstring) at JPEG ``quality`` 1-100."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"jpeg_compressibility: quality must be an int in [1, 100], got {quality!r}")

    def reward(images: Any, prompts: Sequence[str]) -> np.ndarray:
        batch = to_image_batch(images)
        if len(prompts) != len(batch):
            raise ValueError(f"got {len(batch)} images but {len(prompts)} prompts; pass exactly one prompt per image")
        sizes = np.array([jpeg_size_bytes(image, int(quality)) for image in batch], dtype=np.float64)
        if scaled:
            raw = batch.shape[1] * batch.shape[2] * 3
            return np.clip(1 - sizes / raw, 0.0, 1.0)
        return -sizes / 1000

    return reward
