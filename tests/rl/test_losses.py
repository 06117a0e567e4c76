"""Clipped surrogates (gradient where PPO / the official clamp say), advantages, reward normaliser."""

import numpy as np
import pytest
import torch

from dpok.rl import PerPromptRewardNormaliser, advantages, policy_loss, policy_loss_dpok_clamp, policy_loss_ppo

EPS = 0.1


def _grad(loss_fn, advantage: float, ratio: float) -> float:
    rho = torch.tensor([ratio], requires_grad=True)
    loss_fn(torch.tensor([advantage]), rho, EPS).backward()
    return float(rho.grad)


@pytest.mark.parametrize(
    ("advantage", "ratio", "zero_grad"),
    [
        (1.0, 1.5, True),  # A > 0, ρ > 1+ε: already pushed up past the band
        (1.0, 0.5, False),  # A > 0, ρ < 1−ε: still worth raising
        (1.0, 1.05, False),  # inside the band
        (-1.0, 0.5, True),  # A < 0, ρ < 1−ε: already pushed down past the band
        (-1.0, 1.5, False),  # A < 0, ρ > 1+ε: still worth lowering
        (-1.0, 0.95, False),
    ],
)
def test_ppo_gradient_vanishes_exactly_where_ppo_says(advantage, ratio, zero_grad):
    grad = _grad(policy_loss_ppo, advantage, ratio)
    if zero_grad:
        assert grad == 0.0
    else:
        assert grad == pytest.approx(-advantage)  # d/dρ of −Aρ


@pytest.mark.parametrize("advantage", [1.0, -1.0])
@pytest.mark.parametrize(("ratio", "zero_grad"), [(1.5, True), (0.5, True), (1.05, False), (0.95, False)])
def test_dpok_clamp_gradient_vanishes_outside_the_band_whatever_the_sign(advantage, ratio, zero_grad):
    grad = _grad(policy_loss_dpok_clamp, advantage, ratio)
    assert (grad == 0.0) if zero_grad else grad == pytest.approx(-advantage)


def test_loss_values():
    a, rho = torch.tensor([2.0, -1.0, 1.0]), torch.tensor([1.5, 1.5, 0.5])
    # PPO: max(−Aρ, −A·clip(ρ)) = max(−3, −2.2), max(1.5, 1.1), max(−0.5, −0.9)
    assert float(policy_loss_ppo(a, rho, EPS)) == pytest.approx((-2.2 + 1.5 - 0.5) / 3)
    assert float(policy_loss_dpok_clamp(a, rho, EPS)) == pytest.approx((-2.2 + 1.1 - 0.9) / 3)
    assert float(policy_loss("ppo", a, rho, EPS)) == float(policy_loss_ppo(a, rho, EPS))
    with pytest.raises(ValueError, match="clip_mode"):
        policy_loss("trpo", a, rho, EPS)


def test_advantages_detach_the_value():
    r = torch.tensor([1.0, 0.0])
    v = torch.tensor([0.25, 0.5], requires_grad=True)
    a = advantages(r, v, reward_weight=10.0)
    torch.testing.assert_close(a, torch.tensor([7.5, -5.0]))
    assert not a.requires_grad
    torch.testing.assert_close(advantages(r, None, reward_weight=3.0), torch.tensor([3.0, 0.0]))


def test_per_prompt_normaliser_uses_each_prompts_window():
    normaliser = PerPromptRewardNormaliser(window=4, min_count=2)
    first = normaliser(["a", "a", "b"], np.array([1.0, 3.0, 10.0]))
    # "a" has 2 rewards (its own stats: mean 2, std 1); "b" has 1 < min_count → batch stats
    batch = np.array([1.0, 3.0, 10.0])
    np.testing.assert_allclose(first[:2], [-1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(first[2], (10.0 - batch.mean()) / (batch.std() + 1e-6), atol=1e-6)
    for value in (5.0, 5.0, 5.0):  # the window keeps the last 4 of "a": 3, 5, 5, 5
        normaliser(["a"], np.array([value]))
    history = np.array([3.0, 5.0, 5.0, 5.0])
    out = normaliser.__class__(4, 2)
    out.load_state_dict(normaliser.state_dict())
    expected = (5.0 - np.mean([5.0, 5.0, 5.0, 5.0])) / (0.0 + 1e-6)
    assert out(["a"], np.array([5.0]))[0] == pytest.approx(expected)
    assert normaliser.state_dict()["history"]["a"] == list(history)


def test_pooled_scale_centres_per_prompt_but_divides_by_the_std_of_all_prompts() -> None:
    # "a" is nearly solved: its own std is tiny, so scale="prompt" blows one unlucky sample up.
    by_prompt = PerPromptRewardNormaliser(window=8, min_count=2, scale="prompt")
    by_pool = PerPromptRewardNormaliser(window=8, min_count=2, scale="pooled")
    for normaliser in (by_prompt, by_pool):
        normaliser(["a"] * 4, np.array([1.0, 1.0, 1.0, 1.0]))
        normaliser(["b", "b"], np.array([0.4, 0.4]))
    batch_prompts, batch = ["a", "b", "b"], np.array([0.9, 0.2, 0.6])
    a_rewards, b_rewards = np.array([1.0] * 4 + [0.9]), np.array([0.4, 0.4, 0.2, 0.6])
    pooled = np.concatenate([a_rewards, b_rewards]).std()
    got = by_pool(batch_prompts, batch)
    expected = [(0.9 - a_rewards.mean()) / pooled, (0.2 - b_rewards.mean()) / pooled, (0.6 - b_rewards.mean()) / pooled]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert by_prompt(batch_prompts, batch)[0] < 4 * got[0] < 0  # the per-prompt std is far smaller
    # a round in which every reward is the same (std 0) must not divide by zero
    flat = by_pool(["a", "b"], np.array([1.0, 1.0]))
    assert np.all(np.isfinite(flat)) and np.all(np.abs(flat) < 5)
    restored = PerPromptRewardNormaliser(window=8, min_count=2)
    restored.load_state_dict(by_pool.state_dict())
    assert restored.scale == "pooled"
    with pytest.raises(ValueError, match="scale"):
        PerPromptRewardNormaliser(scale="batch")
