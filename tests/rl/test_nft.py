"""``policy.objective: nft`` (dpok.rl.nft): the loss against a float64 expansion and its closed-form minimiser,
the optimality map, config checks, and runs of the trainer with it (learning, resume)."""

import numpy as np
import pytest
import torch

from dpok.rl import train_dpok
from dpok.rl.nft import nft_loss, nft_target, optimality_probability
from helpers import finetune_config

NFT = {"policy.objective": "nft", "value.enabled": False, "advantage.normalisation": "group",
       "rollout.trajectories_per_prompt": 2, "advantage.reward_weight": 1.0}


def test_optimality_maps_advantages_to_zero_half_one():
    a = torch.tensor([-5.0, -1.0, 0.0, 0.5, 2.0, 9.0])
    torch.testing.assert_close(optimality_probability(a, 2.0), torch.tensor([0.0, 0.25, 0.5, 0.625, 1.0, 1.0]))
    with pytest.raises(ValueError, match="clip"):
        optimality_probability(a, 0.0)


@pytest.mark.parametrize("strength", [0.3, 1.0, 2.5])
def test_loss_is_the_two_implicit_policies_and_its_minimiser_is_the_closed_form(strength):
    g = torch.Generator().manual_seed(0)
    model, old, noise = (torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    r = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    # independent expansion, element by element in float64
    expected = []
    for i in range(5):
        pos = ((1 - strength) * old[i] + strength * model[i] - noise[i]) ** 2
        neg = ((1 + strength) * old[i] - strength * model[i] - noise[i]) ** 2
        expected.append(float(r[i] * pos.mean() + (1 - r[i]) * neg.mean()))
    loss = nft_loss(model, old, noise, r, strength)
    np.testing.assert_allclose(loss.double().numpy(), expected, rtol=1e-5)
    # the gradient vanishes at the closed-form target, and the loss there is below any other point's
    target = nft_target(old, noise, r, strength).clone().requires_grad_(True)
    nft_loss(target, old, noise, r, strength).sum().backward()
    assert target.grad.abs().max() < 1e-5
    nudged = target.detach() + 0.01 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    assert (nft_loss(nudged, old, noise, r, strength) > nft_loss(target.detach(), old, noise, r, strength)).all()
    # an average image (r = ½) leaves the prediction where it was
    torch.testing.assert_close(nft_target(old, noise, torch.full((5,), 0.5, dtype=torch.float64), strength), old)


def test_config_refuses_nft_with_a_value_function_or_raw_rewards():
    with pytest.raises(ValueError, match="finetune.rl.value.enabled"):
        finetune_config({**NFT, "value.enabled": True})
    with pytest.raises(ValueError, match="finetune.rl.advantage.normalisation"):
        finetune_config({**NFT, "advantage.normalisation": "none"})
    with pytest.raises(ValueError, match="finetune.rl.policy.objective"):
        finetune_config({"policy.objective": "nfts"})
    with pytest.raises(ValueError, match="finetune.rl.policy.nft_strength"):
        finetune_config({**NFT, "policy.nft_strength": 0})


def test_nft_resumes_to_the_same_lora(make_pipeline, prompts, reward_fn, small_config, tmp_path):
    config = lambda rounds: small_config({**NFT, "runtime.num_rounds": rounds, "runtime.checkpoint_every": 2})  # noqa: E731
    straight = train_dpok(make_pipeline(), prompts, reward_fn, config(4), tmp_path / "straight", progress=False)
    train_dpok(make_pipeline(), prompts, reward_fn, config(2), tmp_path / "split", progress=False)
    torch.manual_seed(7)
    resumed = train_dpok(make_pipeline(), prompts, reward_fn, config(4), tmp_path / "split", progress=False)
    assert resumed.resumed_from is not None
    for key, value in straight.lora_state.items():
        torch.testing.assert_close(resumed.lora_state[key], value, rtol=0, atol=1e-6)
    assert any(v.abs().max() > 0 for k, v in straight.lora_state.items() if "lora_B" in k)
    row = straight.history[-1]
    assert np.isfinite(row["policy_loss"]) and np.isfinite(row["kl_penalty"]) and np.isnan(row["ratio_dev"])
