"""Reward functions ``fn(images, prompts) -> scores`` chosen by name (see :mod:`dpok.rewards.registry`).

Importing this package registers the built-in rewards: ``shapes_judge``, ``shapes_quality``,
``jpeg_compressibility``, ``imagereward``, ``aesthetic``, ``pickscore``, ``hpsv2``, ``clip_score`` (the
model-based ones load their weights lazily) and ``http`` (any reward behind a server,
:mod:`dpok.rewards.remote`; scales and formulas: docs/rewards.md). Other modules register more with
:func:`register_reward` when imported.
"""

from dpok.rewards import aesthetic as _aesthetic  # noqa: F401  (registers aesthetic; weights load lazily)
from dpok.rewards import clip_rewards as _clip_rewards  # noqa: F401  (registers pickscore, hpsv2, clip_score)
from dpok.rewards import imagereward as _imagereward  # noqa: F401  (registers imagereward; weights load lazily)
from dpok.rewards import jpeg as _jpeg  # noqa: F401  (registers jpeg_compressibility)
from dpok.rewards import remote as _remote  # noqa: F401  (registers http)
from dpok.rewards import shapes as _shapes  # noqa: F401  (registers shapes_judge, shapes_quality)
from dpok.rewards.registry import (
    RewardFactory,
    RewardFn,
    UnknownRewardError,
    WeightedReward,
    available_rewards,
    get_reward_fn,
    register_reward,
    reward_term_metrics,
    weighted_reward,
)

__all__ = [
    "RewardFactory",
    "RewardFn",
    "UnknownRewardError",
    "WeightedReward",
    "available_rewards",
    "get_reward_fn",
    "register_reward",
    "reward_term_metrics",
    "weighted_reward",
]
