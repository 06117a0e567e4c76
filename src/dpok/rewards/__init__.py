"""Reward functions ``fn(images, prompts) -> scores`` chosen by name (see :mod:`dpok.rewards.registry`).

Importing this package registers the built-in rewards: ``shapes_judge``, ``shapes_quality``,
``jpeg_compressibility``, ``imagereward`` and ``aesthetic`` (the last two load their weights lazily). Other modules register more with :func:`register_reward` when imported.
"""

from dpok.rewards import aesthetic as _aesthetic  # noqa: F401  (registers aesthetic; weights load lazily)
from dpok.rewards import imagereward as _imagereward  # noqa: F401  (registers imagereward; weights load lazily)
from dpok.rewards import jpeg as _jpeg  # noqa: F401  (registers jpeg_compressibility)
from dpok.rewards import shapes as _shapes  # noqa: F401  (registers shapes_judge, shapes_quality)
from dpok.rewards.registry import (
    RewardFactory,
    RewardFn,
    UnknownRewardError,
    available_rewards,
    get_reward_fn,
    register_reward,
    weighted_reward,
)

__all__ = [
    "RewardFactory",
    "RewardFn",
    "UnknownRewardError",
    "available_rewards",
    "get_reward_fn",
    "register_reward",
    "weighted_reward",
]
