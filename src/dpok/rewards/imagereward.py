"""The ``imagereward`` reward: THUDM's ImageReward v1.0 (docs/algorithm.md §7), from local files or hub ids.

The model (:mod:`dpok.models.imagereward`) loads the official ``ImageReward.pt`` strictly. Paths are
checked when the reward is built (so ``kedro run`` fails at parameter validation, naming the option);
the weights load on the first call (so validating parameters never loads 1.8 GB).

Example (``parameters_finetune.yml``)::

    reward: {imagereward: 1.0, aesthetic: 0.1}
    reward_kwargs:
      imagereward:
        checkpoint: data/06_models/reward_models/ImageReward/ImageReward.pt
        med_config: data/06_models/reward_models/ImageReward/med_config.json
        tokenizer: data/06_models/reward_models/bert-base-uncased   # or the hub id bert-base-uncased
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dpok.rewards.registry import RewardFn, check_batch_size, lazily_loaded_reward, register_reward

FETCH_HINT = "fetch it once online as described in docs/sd15.md (huggingface-cli download THUDM/ImageReward ...)"


@register_reward("imagereward")
def imagereward(
    checkpoint: str,
    med_config: str,
    tokenizer: str = "bert-base-uncased",
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
    vision: Mapping[str, Any] | None = None,
) -> RewardFn:
    """Build the ImageReward reward.

    Args:
        checkpoint: ``ImageReward.pt`` (official key layout; loaded strictly).
        med_config: ``med_config.json`` published with it (BLIP's BERT settings).
        tokenizer: A BERT tokenizer folder or hub id (``bert-base-uncased``).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda[:N]``.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``, ``bfloat16``.
        batch_size: Images per forward pass.
        vision: BLIP ViT settings overriding ViT-L/16 at 224 (only for other BLIP sizes and tests).
    """
    from dpok.models.checkpoints import check_device_and_dtype, resolve_file, resolve_pretrained
    from dpok.models.imagereward import BlipVisionSettings, MedTextSettings

    checkpoint_path = resolve_file(checkpoint, "imagereward", "checkpoint", FETCH_HINT)
    med_config_path = resolve_file(med_config, "imagereward", "med_config", FETCH_HINT)
    vision_settings = BlipVisionSettings.from_dict(vision)
    MedTextSettings.from_med_config(med_config_path, vision_settings.hidden_size)  # readable and sensible
    tokenizer_source = resolve_pretrained(
        tokenizer, "imagereward", "tokenizer", "tokenizer_config.json",
        "save bert-base-uncased's tokenizer once online (see docs/sd15.md) or give its hub id while online",
    )
    check_device_and_dtype("imagereward", device, dtype)
    check_batch_size("imagereward", batch_size)

    def load():
        from dpok.models.imagereward import load_imagereward

        return load_imagereward(
            checkpoint_path, med_config_path, tokenizer_source, device, dtype, batch_size, vision_settings
        )

    def score(scorer, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        from dpok.models.aesthetic import pil_resize_crop

        pixels = pil_resize_crop(images, scorer.model.image_size)  # exactly the original's PIL resize
        return scorer.score(pixels, prompts).double().numpy()

    return lazily_loaded_reward(load, score)
