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

import numpy as np

from dpok.rewards.registry import RewardFn, check_batch_size, lazily_loaded_reward, register_reward


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
    from dpok.models.checkpoints import check_device_and_dtype, resolve_file, resolve_pretrained

    fetch = "fetch it once online as described in docs/sd15.md"
    weights_path = resolve_file(mlp_weights, "aesthetic", "mlp_weights", fetch)
    clip_source = resolve_pretrained(clip_model, "aesthetic", "clip_model", "config.json", fetch)
    check_device_and_dtype("aesthetic", device, dtype)
    check_batch_size("aesthetic", batch_size)

    def load():
        from dpok.models.aesthetic import load_aesthetic_model

        return load_aesthetic_model(clip_source, weights_path, device, dtype)

    def score(model, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        from dpok.models.aesthetic import pil_resize_crop

        return model.score(pil_resize_crop(images, model.image_size), batch_size).double().numpy()

    return lazily_loaded_reward(load, score)
