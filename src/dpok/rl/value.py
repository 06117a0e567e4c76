"""The value function V_φ(x_t, t, z) of docs/algorithm.md §4, a baseline that lowers the gradient's variance.

Architecture as in the official code: the flattened latent concatenated with the prompt's text feature,
three 256-wide layers, each ``Linear`` then multiplied by a learned per-step embedding then ReLU, then a
linear head. It regresses the final reward (a Monte-Carlo target) with MSE and its own AdamW.
The per-step embedding is indexed by the step's position in the schedule (0 = first, noisiest step),
so its table has ``num_steps`` rows.

The head starts at zero, so an untrained V_φ is the no-baseline case rather than random noise added to
every advantage.

Optional extra features of ``x_t`` (``FinetuneConfig.value_features``) are concatenated to its input:
Tweedie's estimate x̂_0 = (x_t − sqrt(1 − ᾱ_t)·ε̄)/sqrt(ᾱ_t), which shows what the trajectory is heading
for far earlier than the noisy x_t does, and the reward of the image decoded from x̂_0 (the *score*, the
last extra feature when ``has_score``). The score also reaches the output through a per-step gain a_t,
V = MLP(...) + a_t · score, which :meth:`ValueFunction.fit_score_gain` sets by least squares on the buffer
before the MLP's steps (then fitting the rest): in the last steps the score is nearly the final reward,
and a gain learned by AdamW at the value learning rate would take about a thousand steps to get there.
With ``value.shrinkage`` the trainer's baseline is λ_t·V, λ_t ∈ [0, 1] the per-step least-squares multiple of V's
*out-of-sample* predictions (made on fresh transitions before V was fitted on them, recent rounds weighted
most; :meth:`ValueFunction.record_out_of_sample`). Where V does not predict the reward (the early steps
of a group that shares x_T: nothing drawn yet tells its trajectories apart) λ_t goes to 0 and V stops
adding its noise to the advantage; where it does (the last steps) λ_t stays near 1.
Any function of ``x_t`` is a valid baseline (it does not depend on the action taken from ``x_t``), so the
policy gradient stays unbiased; a better prediction of the final reward lowers its variance.
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
        extra_dim: int = 0,
        has_score: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim = int(math.prod(latent_shape))
        self.text_dim = int(text_dim)
        self.num_steps = int(num_steps)
        self.extra_dim = int(extra_dim)
        dims = [self.latent_dim + self.text_dim + self.extra_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.step_embeddings = nn.ModuleList(nn.Embedding(self.num_steps, hidden_dim) for _ in range(num_layers))
        for embedding in self.step_embeddings:
            nn.init.ones_(embedding.weight)  # start as a plain MLP shared by all steps
        self.head = nn.Linear(hidden_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.has_score = bool(has_score)
        if self.has_score and self.extra_dim < 1:
            raise ValueError("has_score needs the score as the last of at least one extra feature")
        # a_t of V = MLP + a_t · score: fitted in closed form (fit_score_gain), not by the optimiser
        self.register_buffer("score_gain", torch.zeros(self.num_steps))
        # Σ V·r and Σ V² of out-of-sample predictions per step, older rounds decayed: λ_t of shrinkage()
        self.register_buffer("shrinkage_products", torch.zeros(self.num_steps, dtype=torch.float64))
        self.register_buffer("shrinkage_squares", torch.zeros(self.num_steps, dtype=torch.float64))

    @torch.no_grad()
    def fit_score_gain(
        self, step_indices: torch.Tensor, extra_features: torch.Tensor, targets: torch.Tensor, ridge: float = 0.1
    ) -> None:
        """a_t = Σ score·target / (Σ score² + ridge·n) over the transitions of each step t (ridge regression
        through the origin; targets are standardised rewards, so the fit needs no intercept)."""
        if not self.has_score:
            return
        device = self.score_gain.device
        score, targets = extra_features[:, -1].to(device).double(), targets.to(device).double()
        steps = step_indices.long().to(device)
        numerator = torch.zeros(self.num_steps, dtype=torch.float64, device=device).index_add_(0, steps, score * targets)
        denominator = torch.zeros(self.num_steps, dtype=torch.float64, device=device).index_add_(0, steps, score**2)
        counts = torch.bincount(steps, minlength=self.num_steps).double()
        fitted = numerator / (denominator + ridge * counts).clamp(min=1e-12)
        self.score_gain.copy_(torch.where(counts > 0, fitted, self.score_gain.double()).float())

    @torch.no_grad()
    def record_out_of_sample(
        self, step_indices: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor, decay: float
    ) -> None:
        """Add one round's predictions, made before V_φ was fitted on these transitions, to the per-step
        sums behind :meth:`shrinkage`, after multiplying the earlier rounds' sums by ``decay``."""
        device = self.shrinkage_products.device
        steps = step_indices.long().to(device)
        predictions, targets = predictions.to(device).double(), targets.to(device).double()
        self.shrinkage_products.mul_(decay).index_add_(0, steps, predictions * targets)
        self.shrinkage_squares.mul_(decay).index_add_(0, steps, predictions**2)

    def shrinkage(self) -> torch.Tensor:
        """λ_t = Σ V·r / Σ V² per step over the recorded predictions, clipped to [0, 1] (the multiple of V
        that best predicts the reward, least squares through the origin); 0 before any prediction."""
        squares = self.shrinkage_squares
        gain = torch.where(squares > 0, self.shrinkage_products / squares.clamp(min=1e-300), torch.zeros_like(squares))
        return gain.clamp(0.0, 1.0).float()

    def forward(
        self,
        latents: torch.Tensor,
        step_indices: torch.Tensor,
        text_features: torch.Tensor,
        extra_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = [latents.float().flatten(1), text_features.float()]
        if self.extra_dim:
            if extra_features is None or extra_features.shape[-1] != self.extra_dim:
                raise ValueError(f"this value function takes {self.extra_dim} extra features per transition")
            inputs.append(extra_features.float().flatten(1))
        h = torch.cat(inputs, dim=1)
        for layer, embedding in zip(self.layers, self.step_embeddings):
            h = torch.relu(layer(h) * embedding(step_indices.long()))
        value = self.head(h).squeeze(-1)
        if self.has_score:
            value = value + self.score_gain[step_indices.long()] * extra_features[:, -1].float()
        return value


def value_loss(
    value_fn: ValueFunction,
    latents: torch.Tensor,
    step_indices: torch.Tensor,
    text_features: torch.Tensor,
    rewards: torch.Tensor,
    extra_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between V_φ(x_t, t, z) and the trajectory's final reward."""
    prediction = value_fn(latents, step_indices, text_features, extra_features)
    return torch.mean((prediction - rewards.float()) ** 2)


def value_update(
    value_fn: ValueFunction,
    optimizer: torch.optim.Optimizer,
    latents: torch.Tensor,
    step_indices: torch.Tensor,
    text_features: torch.Tensor,
    rewards: torch.Tensor,
    extra_features: torch.Tensor | None = None,
) -> float:
    """One AdamW step on the value MSE; returns the loss before the step."""
    optimizer.zero_grad(set_to_none=True)
    loss = value_loss(value_fn, latents, step_indices, text_features, rewards, extra_features)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
