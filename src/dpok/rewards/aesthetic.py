"""The ``aesthetic`` reward: the LAION aesthetic predictor on CLIP ViT-L/14 (docs/algorithm.md §7, the quality proxy).

Prompt-free: prompts are only counted against images. Paths are checked when the reward is built; the
CLIP model and the MLP load on the first call. Combine it with others by weight, e.g.
``reward: {imagereward: 1.0, aesthetic: 0.1}``.

Example (``parameters_finetune.yml``)::

    reward_kwargs:
      aesthetic:
        clip_model: data/06_models/reward_models/clip-vit-large-patch14   # or openai/clip-vit-large-patch14
        mlp_weights: data/06_models/reward_models/aesthetic/sac+logos+ava1-l14-linearMSE.pth
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dpok.rewards.registry import RewardFn, register_reward
from dpok.world import to_image_batch


@register_reward("aesthetic")
def aesthetic(
    mlp_weights: str,
    clip_model: str = "openai/clip-vit-large-patch14",
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
) -> RewardFn:
    """Build the aesthetic reward.

    Args:
        mlp_weights: The LAION MLP weights (``sac+logos+ava1-l14-linearMSE.pth``; loaded strictly).
        clip_model: A ``CLIPModel`` folder or hub id (``openai/clip-vit-large-patch14``).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda[:N]``.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``, ``bfloat16``.
        batch_size: Images per forward pass.
    """
    from dpok.models.aesthetic import check_device_and_dtype, resolve_file, resolve_pretrained

    fetch = "fetch it once online as described in docs/sd15.md"
    weights_path = resolve_file(mlp_weights, "aesthetic", "mlp_weights", fetch)
    clip_source = resolve_pretrained(clip_model, "aesthetic", "clip_model", "config.json", fetch)
    check_device_and_dtype("aesthetic", device, dtype)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"aesthetic: batch_size must be a positive integer, got {batch_size!r}")

    model = None

    def reward(images: Any, prompts: Sequence[str]) -> np.ndarray:
        nonlocal model
        from dpok.models.aesthetic import load_aesthetic_model, uint8_images_to_pixels

        batch = to_image_batch(images)
        if len(prompts) != len(batch):
            raise ValueError(f"got {len(batch)} images but {len(prompts)} prompts; pass exactly one prompt per image")
        if model is None:
            model = load_aesthetic_model(clip_source, weights_path, device, dtype)
        return model.score(uint8_images_to_pixels(batch), batch_size).double().numpy()

    return reward
