"""Reward-weighted SFT (dpok.rl.sft): the loss against a hand computation, the config's checks, and a
seconds-long run on the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpok.rl import SFT_METRIC_NAMES, SFTConfig, sft_loss, train_sft
from dpok.rl.sft import reward_weights, sample_pretrained
from helpers import base_parameters


def _hand_loss(pred, noise, ref, weights, gamma):
    """The objective written out element by element, in float64 numpy."""
    pred, noise, ref, weights = (np.asarray(t, dtype=np.float64) for t in (pred, noise, ref, weights))
    batch = pred.shape[0]
    weighted = sum(weights[i] * ((pred[i] - noise[i]) ** 2).mean() for i in range(batch)) / batch
    kl = sum(((pred[i] - ref[i]) ** 2).mean() for i in range(batch)) / batch
    return weighted + gamma * kl, weighted, kl


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sft_loss_is_the_reward_weighted_mse_plus_gamma_times_the_supervised_kl(gamma):
    g = torch.Generator().manual_seed(0)
    pred, noise, ref = (torch.randn(5, 4, 3, 3, generator=g) for _ in range(3))
    weights = torch.tensor([0.0, 0.2, 1.0, 0.5, 3.0])
    loss, parts = sft_loss(pred, noise, ref, weights, gamma)
    expected, weighted, kl = _hand_loss(pred, noise, ref, weights, gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["weighted_mse"] == pytest.approx(weighted, rel=1e-6)
    assert parts["kl_mse"] == pytest.approx(kl if gamma > 0 else 0.0, rel=1e-6, abs=1e-12)
    # A sample of weight 0 contributes nothing to the first term's gradient.
    pred = pred.clone().requires_grad_(True)
    sft_loss(pred, noise, ref, weights, 0.0)[0].backward()
    assert pred.grad[0].abs().max() == 0 and pred.grad[2].abs().max() > 0


def test_sft_loss_needs_the_reference_only_with_a_kl_weight():
    x = torch.zeros(2, 1, 2, 2)
    assert sft_loss(x, x, None, torch.ones(2), 0.0)[0].item() == 0.0
    with pytest.raises(ValueError, match="pretrained model's prediction"):
        sft_loss(x, x, None, torch.ones(2), 1.0)


def test_negative_weights_are_refused_with_the_offset_to_set():
    assert reward_weights(np.array([0.0, 0.5]), 0.0).tolist() == [0.0, 0.5]
    assert reward_weights(np.array([-1.5, 0.5]), 2.0).tolist() == [0.5, 2.5]
    with pytest.raises(ValueError, match=r"finetune.sft.reward_offset to at least 1.5"):
        reward_weights(np.array([-1.5, 0.5]), 0.0)


@pytest.mark.parametrize(
    "change, message",
    [({"steps": 0}, "finetune.sft.steps must be an integer >= 1"), ({"kl_weight": -1.0}, "finetune.sft.kl_weight"),
     ({"batch_size": 2.5}, "finetune.sft.batch_size"), ({"reward_offset": float("nan")}, "reward_offset"),
     ({"lr": 1.0}, "unknown key.*finetune.sft.lr")],
)
def test_bad_sft_settings_name_their_key(change, message):
    with pytest.raises(ValueError, match=message):
        SFTConfig.from_dict({**base_parameters()["finetune"]["sft"], **change})


def test_sample_set_is_what_dpok_would_sample_in_its_first_round(make_pipeline, prompts, reward_fn, small_config):
    """Same prompts, groups and noise streams as DPOK's round 1 (before DPOK's first update)."""
    from dpok.rl.rollout import draw_prompts, sample_round

    config = small_config({"runtime.num_rounds": 2})
    pipeline = make_pipeline()
    data = sample_pretrained(pipeline, prompts, reward_fn, config)
    assert data.latents.shape[0] == len(data.prompts) == len(data.rewards) == 2 * config.rollout.g_batch
    round_prompts, groups = draw_prompts(prompts, config, 1)
    first = sample_round(pipeline, round_prompts, groups, config, 1)
    assert data.prompts[: config.rollout.g_batch] == round_prompts
    torch.testing.assert_close(data.latents[: config.rollout.g_batch], first.latents[:, -1], rtol=0, atol=0)
    assert [row[0] for row in data.reward_log] == [1] * config.rollout.g_batch + [2] * config.rollout.g_batch


def test_a_short_sft_run_changes_the_lora_and_reports_its_kl(make_pipeline, prompts, reward_fn, small_config):
    rl = small_config({"runtime.num_rounds": 2, "runtime.kl_report_trajectories": 1})
    sft = SFTConfig.from_dict({**base_parameters()["finetune"]["sft"], "steps": 3, "batch_size": 4, "report_every": 2,
                               "kl_weight": 0.5})
    pipeline = make_pipeline()
    result = train_sft(pipeline, prompts, reward_fn, rl, sft, progress=False)
    assert [row["round"] for row in result.history] == [1, 2, 3]
    assert all(set(row) == set(SFT_METRIC_NAMES) for row in result.history)
    kl = [row["kl_bound_nats"] for row in result.history]
    assert np.isnan(kl[0]) and np.isfinite(kl[1]) and kl[2] > 0
    assert any(name.endswith("lora_B.default_0.weight") or "lora_B" in name for name in result.lora_state)
    assert max(v.abs().max().item() for k, v in result.lora_state.items() if "lora_B" in k) > 0
    assert len(result.reward_log) == 2 * rl.rollout.g_batch
    # The same settings give the same LoRA (every draw comes from the run's seed).
    again = train_sft(make_pipeline(), prompts, reward_fn, rl, sft, progress=False)
    for name, value in result.lora_state.items():
        torch.testing.assert_close(again.lora_state[name], value, rtol=0, atol=0)
