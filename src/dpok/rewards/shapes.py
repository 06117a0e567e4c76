"""Rewards of the shapes world: the judge (alignment) and the quality score (aesthetics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dpok.images import to_image_batch
from dpok.rewards.registry import RewardFn, register_reward
from dpok.world import judge, quality


@register_reward("shapes_judge")
def shapes_judge() -> RewardFn:
    """Text-image alignment by :func:`dpok.world.judge` (the ImageReward of the shapes world)."""

    def reward(images: Any, prompts: Sequence[str]) -> np.ndarray:
        return judge(images, prompts)

    return reward


@register_reward("shapes_quality")
def shapes_quality() -> RewardFn:
    """Prompt-free quality by :func:`dpok.world.quality`; prompts are only counted against images."""

    def reward(images: Any, prompts: Sequence[str]) -> np.ndarray:
        batch = to_image_batch(images)
        if len(prompts) != len(batch):
            raise ValueError(f"got {len(batch)} images but {len(prompts)} prompts; pass exactly one prompt per image")
        return quality(batch)

    return reward
