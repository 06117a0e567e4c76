"""FIFO buffer of denoising transitions (docs/algorithm.md §4, step 2).

A transition is ``(z, x_t, x_{t−1}, t, step index, log p_old, r, b, f)``, where ``b`` is the baseline the
advantage subtracts (the value function's prediction when the transition arrived; 0 without one) and
``f`` the value function's extra input features of ``x_t`` (for example Tweedie's x̂_0; may be empty). The
buffer holds at most ``capacity`` of them; pushing more drops the oldest. Prompt embeddings are not
copied per transition: each distinct prompt gets one row in a small table (conditional and unconditional
embeddings) and a transition stores the row's index. The text encoder is frozen in DPOK, so a prompt's
embeddings never change and the table is bounded by the training prompt set.

Tensors live on the CPU; :meth:`TransitionBatch.to` moves a micro-batch to the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from dpok.rl.sampling import Trajectory

_PER_TRANSITION = (
    "latents", "next_latents", "timesteps", "step_indices", "log_probs", "rewards", "baselines", "value_features",
    "prompt_index",
)


@dataclass
class TransitionBatch:
    """A micro-batch of transitions; ``latents`` is x_t and ``next_latents`` is x_{t−1}."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    latents: torch.Tensor
    next_latents: torch.Tensor
    timesteps: torch.Tensor
    step_indices: torch.Tensor
    log_probs: torch.Tensor
    rewards: torch.Tensor
    baselines: torch.Tensor
    value_features: torch.Tensor
    prompts: list[str]

    def __len__(self) -> int:
        return self.latents.shape[0]

    def to(self, device: torch.device | str) -> TransitionBatch:
        moved = {}
        for field in fields(self):
            value = getattr(self, field.name)
            moved[field.name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return TransitionBatch(**moved)

    def rows(self, index: range) -> TransitionBatch:
        """The transitions at ``index`` (a contiguous range; the whole range is this batch itself)."""
        if index == range(len(self)):
            return self
        part = slice(index.start, index.stop)
        return TransitionBatch(**{
            field.name: None if getattr(self, field.name) is None else getattr(self, field.name)[part]
            for field in fields(self)
        })


class TransitionBuffer:
    """Ring buffer of transitions with uniform sampling; logical index 0 is the oldest transition."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._start = 0
        self._size = 0
        self._storage: dict[str, torch.Tensor] = {}
        self._table_prompts: list[str] = []
        self._table_rows: dict[str, int] = {}
        self._table_cond: torch.Tensor | None = None
        self._table_uncond: torch.Tensor | None = None

    def __len__(self) -> int:
        return self._size

    def _prompt_rows(self, trajectory: Trajectory) -> torch.Tensor:
        has_uncond = trajectory.negative_prompt_embeds is not None
        if self._table_cond is not None and has_uncond != (self._table_uncond is not None):
            raise ValueError("cannot mix trajectories sampled with and without CFG in one buffer")
        rows, new_cond, new_uncond = [], [], []
        for b, prompt in enumerate(trajectory.prompts):
            if prompt not in self._table_rows:
                self._table_rows[prompt] = len(self._table_prompts)
                self._table_prompts.append(prompt)
                new_cond.append(trajectory.prompt_embeds[b].detach().cpu())
                if has_uncond:
                    new_uncond.append(trajectory.negative_prompt_embeds[b].detach().cpu())
            rows.append(self._table_rows[prompt])
        if new_cond:
            cond = torch.stack(new_cond)
            self._table_cond = cond if self._table_cond is None else torch.cat([self._table_cond, cond])
            if has_uncond:
                uncond = torch.stack(new_uncond)
                self._table_uncond = uncond if self._table_uncond is None else torch.cat([self._table_uncond, uncond])
        return torch.tensor(rows, dtype=torch.long)

    def push(
        self,
        trajectory: Trajectory,
        rewards: np.ndarray | torch.Tensor,
        baselines: torch.Tensor | None = None,
        *,
        first_step: int = 0,
        value_features: torch.Tensor | None = None,
    ) -> None:
        """Add every transition of ``trajectory`` (trajectory-major, then step order) with its reward.

        ``baselines``: one per transition, shape (B, T) or (B·T,), in the same order; zeros if None.
        ``first_step``: the schedule position of the trajectory's first step (for a window of steps).
        ``value_features``: (B·T, F) extra value-function inputs in the same order; none if None.
        """
        batch, steps = trajectory.batch_size, trajectory.num_steps
        rewards = torch.as_tensor(np.asarray(rewards, dtype=np.float32)).reshape(-1)
        if rewards.shape[0] != batch:
            raise ValueError(f"got {rewards.shape[0]} rewards for {batch} trajectories")
        if baselines is None:
            baselines = torch.zeros(batch * steps)
        baselines = torch.as_tensor(baselines).detach().cpu().float().reshape(-1)
        if baselines.shape[0] != batch * steps:
            raise ValueError(f"got {baselines.shape[0]} baselines for {batch * steps} transitions")
        if value_features is None:
            value_features = torch.zeros(batch * steps, 0)
        value_features = torch.as_tensor(value_features).detach().cpu().float().reshape(batch * steps, -1)
        latents = trajectory.latents.detach().cpu()
        shape = latents.shape[2:]
        new = {
            "latents": latents[:, :-1].reshape(batch * steps, *shape),
            "next_latents": latents[:, 1:].reshape(batch * steps, *shape),
            "timesteps": trajectory.timesteps.detach().cpu().long().repeat(batch),
            "step_indices": (first_step + torch.arange(steps)).repeat(batch),
            "log_probs": trajectory.log_probs.detach().cpu().float().reshape(-1),
            "rewards": rewards.repeat_interleave(steps),
            "baselines": baselines,
            "value_features": value_features,
            "prompt_index": self._prompt_rows(trajectory).repeat_interleave(steps),
        }
        if not self._storage:
            self._storage = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in new.items()}
        elif self._storage["latents"].shape[1:] != new["latents"].shape[1:]:
            raise ValueError(
                f"latent shape {tuple(shape)} differs from the buffer's {tuple(self._storage['latents'].shape[1:])}"
            )
        elif self._storage["value_features"].shape[1:] != new["value_features"].shape[1:]:
            raise ValueError("value features differ in size from those already in the buffer")
        n = batch * steps
        if n > self.capacity:  # only the newest `capacity` survive
            new = {k: v[-self.capacity :] for k, v in new.items()}
            n = self.capacity
        positions = (self._start + self._size + torch.arange(n)) % self.capacity
        for key, value in new.items():
            self._storage[key][positions] = value
        overflow = max(0, self._size + n - self.capacity)
        self._start = (self._start + overflow) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def get(self, indices: torch.Tensor) -> TransitionBatch:
        """Transitions at logical ``indices`` (0 = oldest)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if self._size == 0:
            raise ValueError("the transition buffer is empty")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self._size):
            raise IndexError(f"buffer index out of range [0, {self._size})")
        positions = (self._start + indices) % self.capacity
        picked = {key: self._storage[key][positions] for key in _PER_TRANSITION}
        rows = picked.pop("prompt_index")
        return TransitionBatch(
            prompt_embeds=self._table_cond[rows],
            negative_prompt_embeds=None if self._table_uncond is None else self._table_uncond[rows],
            prompts=[self._table_prompts[r] for r in rows.tolist()],
            **picked,
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> TransitionBatch:
        """``min(batch_size, len(self))`` distinct transitions drawn uniformly with ``generator``."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty transition buffer")
        indices = torch.randperm(self._size, generator=generator)[: min(batch_size, self._size)]
        return self.get(indices)

    def state_dict(self) -> dict[str, Any]:
        """``{"tensors": {name: tensor}, "meta": {JSON}}``, transitions in logical (oldest-first) order."""
        meta = {"capacity": self.capacity, "size": self._size, "table_prompts": list(self._table_prompts)}
        tensors: dict[str, torch.Tensor] = {}
        if self._size:
            positions = (self._start + torch.arange(self._size)) % self.capacity
            tensors = {key: self._storage[key][positions].contiguous() for key in _PER_TRANSITION}
            tensors["table_prompt_embeds"] = self._table_cond.contiguous()
            if self._table_uncond is not None:
                tensors["table_negative_prompt_embeds"] = self._table_uncond.contiguous()
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta, tensors = state["meta"], state["tensors"]
        if int(meta["capacity"]) != self.capacity:
            raise ValueError(f"buffer state has capacity {meta['capacity']}, this buffer {self.capacity}")
        self.__init__(self.capacity)
        size = int(meta["size"])
        if size == 0:
            return
        self._table_prompts = list(meta["table_prompts"])
        self._table_rows = {p: i for i, p in enumerate(self._table_prompts)}
        self._table_cond = tensors["table_prompt_embeds"].clone()
        uncond = tensors.get("table_negative_prompt_embeds")
        self._table_uncond = None if uncond is None else uncond.clone()
        self._storage = {
            key: torch.zeros((self.capacity, *tensors[key].shape[1:]), dtype=tensors[key].dtype)
            for key in _PER_TRANSITION
        }
        for key in _PER_TRANSITION:
            self._storage[key][:size] = tensors[key]
        self._size = size
