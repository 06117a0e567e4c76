"""The policy objective of docs/algorithm.md §4: advantages, the clipped surrogates, per-prompt reward statistics.

All losses are *minimised* and averaged over the micro-batch. ``ratio`` is
ρ = exp(log p_θ(x_{t−1}|x_t,z) − log p_old(x_{t−1}|x_t,z)).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

CLIP_MODES = ("ppo", "dpok_clamp")


def advantages(rewards: torch.Tensor, values: torch.Tensor | None = None, reward_weight: float = 1.0) -> torch.Tensor:
    """A = α·(r − V(x_t, t, z)) with the value detached, or α·r without a value function."""
    if values is None:
        return reward_weight * rewards
    return reward_weight * (rewards - values.detach())


def _weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return torch.mean(losses if weights is None else weights * losses)


def policy_loss_ppo(
    advantages: torch.Tensor, ratio: torch.Tensor, clip_range: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """PPO's pessimistic clip: mean(w · max(−Aρ, −A·clip(ρ, 1−ε, 1+ε))), w = 1 unless ``weights`` given.

    The gradient vanishes only where moving ρ further would improve the objective beyond the band
    (A > 0 and ρ > 1+ε, or A < 0 and ρ < 1−ε).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return _weighted_mean(torch.maximum(unclipped, clipped), weights)


def policy_loss_dpok_clamp(
    advantages: torch.Tensor, ratio: torch.Tensor, clip_range: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The official code's hard clamp: mean(−w·A·clamp(ρ, 1−ε, 1+ε)); no gradient once ρ leaves the band."""
    return _weighted_mean(-advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range), weights)


POLICY_LOSSES = {"ppo": policy_loss_ppo, "dpok_clamp": policy_loss_dpok_clamp}


def policy_loss(
    clip_mode: str,
    advantages: torch.Tensor,
    ratio: torch.Tensor,
    clip_range: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The clipped surrogate named by ``policy.clip_mode`` (``"ppo"`` or ``"dpok_clamp"``), per-transition
    ``weights`` optional (``policy.step_weighting``)."""
    if clip_mode not in POLICY_LOSSES:
        raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
    return POLICY_LOSSES[clip_mode](advantages, ratio, clip_range, weights)


NORMALISATION_SCALES = ("prompt", "pooled")
REWARD_NORMALISATIONS = ("none", "per_prompt", "group")


def group_statistics(
    group_ids: Sequence[int], rewards: np.ndarray, scale: str = "prompt", eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GRPO's group-relative statistics: per reward, its group's mean and a scale, and which groups vary.

    A group is the trajectories of one prompt in one round (sharing their starting noise when
    ``rollout.share_initial_noise`` is on). The scale is the group's own std (``scale="prompt"``) or the std of
    every reward minus its group mean, pooled over the round (``"pooled"``). ``varied`` is False for the
    rewards of a group whose rewards are all equal: they carry no comparison and are skipped.
    """
    if scale not in NORMALISATION_SCALES:
        raise ValueError(f"scale must be one of {NORMALISATION_SCALES}, got {scale!r}")
    group_ids = np.asarray(group_ids)
    rewards = np.asarray(rewards, dtype=np.float64)
    if group_ids.shape != rewards.shape:
        raise ValueError(f"{group_ids.size} group ids but {rewards.size} rewards")
    means, stds = np.empty_like(rewards), np.empty_like(rewards)
    for group in np.unique(group_ids):
        members = group_ids == group
        means[members] = rewards[members].mean()
        stds[members] = rewards[members].std()
    varied = stds > 1e-12
    if scale == "pooled":
        centred = (rewards - means)[varied]
        stds[:] = np.sqrt(np.mean(centred**2)) if centred.size else 0.0
    return means, stds + eps, varied


class PerPromptRewardNormaliser:
    """Per-prompt reward standardisation over the last ``window`` rewards of each prompt.

    A batch's rewards are first added to their prompts' histories; each reward then has its prompt's
    mean subtracted and is divided by a scale: its prompt's std (``scale="prompt"``, DDPO) or the std of
    all remembered rewards of all prompts (``scale="pooled"``). Prompts with fewer than ``min_count``
    rewards so far use the batch's mean and std instead.

    Why ``"pooled"``: with a discrete reward such as the shapes judge, a nearly solved prompt has a tiny
    std, and one unlucky sample among perfect ones gets an advantage of −5 or more; dividing by the
    prompt's std lets the prompts with the least left to learn dominate the gradient. The per-prompt
    mean still removes the difference between easy and hard prompts. (The std of the round's batch is
    no substitute: a round whose 16 rewards are all 1.0 has std 0, and dividing by it blew a run up.)
    """

    def __init__(self, window: int = 32, min_count: int = 8, eps: float = 1e-6, scale: str = "prompt") -> None:
        if window < 2 or min_count < 2 or min_count > window:
            raise ValueError(f"need 2 <= min_count <= window, got window={window}, min_count={min_count}")
        if scale not in NORMALISATION_SCALES:
            raise ValueError(f"scale must be one of {NORMALISATION_SCALES}, got {scale!r}")
        self.window, self.min_count, self.eps, self.scale = int(window), int(min_count), float(eps), scale
        self._history: dict[str, deque[float]] = {}

    def statistics(self, prompts: Sequence[str], rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add the batch to the histories; return each reward's (mean, scale) to standardise with."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if len(prompts) != len(rewards):
            raise ValueError(f"{len(prompts)} prompts but {len(rewards)} rewards")
        for prompt, reward in zip(prompts, rewards):
            self._history.setdefault(prompt, deque(maxlen=self.window)).append(float(reward))
        batch_mean, batch_std = rewards.mean(), rewards.std()
        pooled_std = np.std(np.concatenate([np.asarray(h) for h in self._history.values()]))
        means, scales = np.empty_like(rewards), np.empty_like(rewards)
        for i, prompt in enumerate(prompts):
            history = self._history[prompt]
            if len(history) >= self.min_count:
                means[i] = np.mean(history)
                scales[i] = (np.std(history) if self.scale == "prompt" else pooled_std) + self.eps
            else:
                means[i], scales[i] = batch_mean, batch_std + self.eps
        return means, scales

    def __call__(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        means, scales = self.statistics(prompts, rewards)
        return (np.asarray(rewards, dtype=np.float64) - means) / scales

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "window": self.window,
            "min_count": self.min_count,
            "eps": self.eps,
            "scale": self.scale,
            "history": {prompt: list(values) for prompt, values in self._history.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window, self.min_count, self.eps = int(state["window"]), int(state["min_count"]), float(state["eps"])
        self.scale = state.get("scale", "prompt")
        self._history = {p: deque(map(float, v), maxlen=self.window) for p, v in state["history"].items()}
