"""The value function V_φ(x_t, t, z) of DPOK.md §4.3, a baseline that lowers the gradient's variance.

Architecture as in the official code: the flattened latent concatenated with the prompt's text feature,
three 256-wide layers, each ``Linear`` then multiplied by a learned per-step embedding then ReLU, then a
linear head. It regresses the final reward (a Monte-Carlo target) with MSE and its own AdamW.
The per-step embedding is indexed by the step's position in the schedule (0 = first, noisiest step),
so its table has ``num_steps`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def prompt_text_feature(prompt_embeds: torch.Tensor) -> torch.Tensor:
    """The prompt's text feature for V: the conditional embeddings mean-pooled over tokens, (B, D).

    Mean-pooling needs no token ids; with CLIP's causal attention every position after the prompt's
    tokens has attended to the whole prompt, so the pool depends on all of it.
    """
    return prompt_embeds.float().mean(dim=1)


class ValueFunction(nn.Module):
    """V_φ(x_t, t, z) → predicted final reward, shape (B,)."""

    def __init__(
        self,
        latent_shape: Sequence[int],
        text_dim: int,
        num_steps: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        self.latent_dim = int(math.prod(latent_shape))
        self.text_dim = int(text_dim)
        self.num_steps = int(num_steps)
        dims = [self.latent_dim + self.text_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.step_embeddings = nn.ModuleList(nn.Embedding(self.num_steps, hidden_dim) for _ in range(num_layers))
        for embedding in self.step_embeddings:
            nn.init.ones_(embedding.weight)  # start as a plain MLP shared by all steps
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, latents: torch.Tensor, step_indices: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        h = torch.cat([latents.float().flatten(1), text_features.float()], dim=1)
        for layer, embedding in zip(self.layers, self.step_embeddings):
            h = torch.relu(layer(h) * embedding(step_indices.long()))
        return self.head(h).squeeze(-1)


def value_loss(
    value_fn: ValueFunction,
    latents: torch.Tensor,
    step_indices: torch.Tensor,
    text_features: torch.Tensor,
    rewards: torch.Tensor,
) -> torch.Tensor:
    """MSE between V_φ(x_t, t, z) and the trajectory's final reward."""
    prediction = value_fn(latents, step_indices, text_features)
    return torch.mean((prediction - rewards.float()) ** 2)


def value_update(
    value_fn: ValueFunction,
    optimizer: torch.optim.Optimizer,
    latents: torch.Tensor,
    step_indices: torch.Tensor,
    text_features: torch.Tensor,
    rewards: torch.Tensor,
) -> float:
    """One AdamW step on the value MSE; returns the loss before the step."""
    optimizer.zero_grad(set_to_none=True)
    loss = value_loss(value_fn, latents, step_indices, text_features, rewards)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
