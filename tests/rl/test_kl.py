"""The exact per-step KL, DPOK's ε-MSE form, and the adapter-disabled reference model."""

import pytest
import torch

from dpok.models import attach_lora, build_ddim_scheduler
from dpok.rl import (
    eps_mse,
    gaussian_kl,
    reference_model,
    sample_trajectories,
    step_kl,
    trajectory_kl_bound,
)
from helpers import base_parameters

# The modules the shapes-world default trains (conf/base).
LORA_TARGETS = base_parameters()["finetune"]["rl"]["lora"]["target_modules"]


def test_gaussian_kl_equals_torch_distributions_summed():
    torch.manual_seed(0)
    mean_p, mean_q = torch.randn(4, 4, 3, 3), torch.randn(4, 4, 3, 3)
    std = torch.rand(4, 1, 1, 1) + 0.1
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean_p, std.expand_as(mean_p)),
        torch.distributions.Normal(mean_q, std.expand_as(mean_q)),
    ).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_kl(mean_p, mean_q, std), expected, rtol=1e-5, atol=1e-6)


def test_step_kl_exact_uses_the_ddim_step_means():
    """Against diffusers: the two means are DDIM steps with zero noise, σ_t from diffusers' formula."""
    scheduler = build_ddim_scheduler()
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    torch.manual_seed(1)
    x, out_p, out_q = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    zero = torch.zeros_like(x)
    mean_p = scheduler.step(out_p, t, x, eta=1.0, variance_noise=zero).prev_sample
    mean_q = scheduler.step(out_q, t, x, eta=1.0, variance_noise=zero).prev_sample
    std = scheduler._get_variance(int(t), int(t) - 100) ** 0.5
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean_p, std), torch.distributions.Normal(mean_q, std)
    ).sum(dim=(1, 2, 3))
    torch.testing.assert_close(step_kl("exact", scheduler, out_p, out_q, t, x), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        step_kl("eps_mse", scheduler, out_p, out_q, t, x), ((out_p - out_q) ** 2).mean((1, 2, 3))
    )
    torch.testing.assert_close(eps_mse(out_p, out_p), torch.zeros(2))
    with pytest.raises(ValueError, match="kl_form"):
        step_kl("sum", scheduler, out_p, out_q, t, x)


def _lora_b(unet):
    return [p for n, p in unet.named_parameters() if "lora_B" in n]


def test_kl_bound_is_zero_for_a_fresh_adapter_and_positive_after_perturbing_it(tiny_pipeline):
    unet = tiny_pipeline.unet
    attach_lora(unet, 4, 4, LORA_TARGETS)
    sample = dict(num_inference_steps=5, guidance_scale=3.0)
    prompts = ["a red circle", "a blue dog"]
    trajectory = sample_trajectories(tiny_pipeline, prompts, generator=torch.Generator().manual_seed(0), **sample)
    fresh = trajectory_kl_bound(unet, tiny_pipeline.scheduler, trajectory)
    assert fresh.shape == (2,)
    # zero up to float noise: B = 0, so only batch-size-dependent rounding differs from sampling
    assert fresh.abs().max() < 1e-6

    with torch.no_grad():
        for p in _lora_b(unet):
            p.add_(0.05 * torch.randn_like(p))
    trajectory = sample_trajectories(tiny_pipeline, prompts, generator=torch.Generator().manual_seed(0), **sample)
    moved = trajectory_kl_bound(unet, tiny_pipeline.scheduler, trajectory, num_trajectories=1, chunk_size=3)
    assert moved.shape == (1,)
    assert moved.item() > 1e-3, moved
    # chunking does not change the number
    torch.testing.assert_close(
        moved, trajectory_kl_bound(unet, tiny_pipeline.scheduler, trajectory, num_trajectories=1, chunk_size=64)
    )


def test_reference_model_is_the_pretrained_unet_and_restores_the_adapter(tiny_pipeline):
    unet = tiny_pipeline.unet
    x, t, e = torch.randn(2, 4, 4, 4), torch.tensor([900, 100]), torch.randn(2, 12, 32)
    with torch.no_grad():
        pretrained = unet(x, t, encoder_hidden_states=e).sample
    params = attach_lora(unet, 4, 4, LORA_TARGETS)
    with torch.no_grad():
        for p in _lora_b(unet):
            p.add_(0.1)
        adapted = unet(x, t, encoder_hidden_states=e).sample
        assert (adapted - pretrained).abs().max() > 1e-3
        with reference_model(unet):
            torch.testing.assert_close(unet(x, t, encoder_hidden_states=e).sample, pretrained)
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=e).sample, adapted)
    assert all(p.requires_grad for p in params)
    with pytest.raises(RuntimeError, match="boom"), reference_model(unet):
        raise RuntimeError("boom")
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=e).sample, adapted)
    assert all(p.requires_grad for p in params)
