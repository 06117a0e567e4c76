"""The DDIM step with log-probability against torch.distributions and diffusers, and the trajectory sampler."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from dpok.models import build_ddim_scheduler
from dpok.rl import (
    ddim_step_mean_std,
    ddim_step_with_logprob,
    gaussian_log_prob,
    guided_noise_prediction,
    sample_trajectories,
    validate_scheduler_for_logprob,
)

SCHEDULER_VARIANTS = {
    "sd": {},
    "v_prediction": {"prediction_type": "v_prediction"},
    "trailing": {"timestep_spacing": "trailing"},
    "linear": {"beta_schedule": "linear"},
}


def _scheduler(variant: str, steps: int) -> DDIMScheduler:
    scheduler = build_ddim_scheduler(SCHEDULER_VARIANTS[variant])
    scheduler.set_timesteps(steps)
    return scheduler


def _diffusers_mean_std(scheduler, model_output, t, sample):
    """μ and σ_t by diffusers itself: the step with zero noise, and its own variance formula."""
    mean = scheduler.step(model_output, int(t), sample, eta=1.0, variance_noise=torch.zeros_like(sample)).prev_sample
    prev_t = int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return mean, scheduler._get_variance(int(t), prev_t) ** 0.5


def test_log_prob_is_mean_reduced_normal_log_density():
    torch.manual_seed(0)
    x, mean = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    std = torch.rand(5, 1, 1, 1) + 0.05
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(SCHEDULER_VARIANTS))
def test_step_equals_diffusers_at_every_step(variant):
    scheduler = _scheduler(variant, 10)
    torch.manual_seed(1)
    for t in scheduler.timesteps:
        sample, model_output = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
        noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(int(t)))
        expected = scheduler.step(model_output, t, sample, eta=1.0, variance_noise=noise).prev_sample
        ours, log_prob = ddim_step_with_logprob(
            scheduler, model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(int(t))
        )
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
        mean, std = _diffusers_mean_std(scheduler, model_output, t, sample)
        reference = torch.distributions.Normal(mean, std).log_prob(expected).mean(dim=(1, 2, 3))
        torch.testing.assert_close(log_prob, reference, rtol=1e-5, atol=1e-5)
        # scoring a given x_{t-1} gives the same log-probability as sampling it
        _, scored = ddim_step_with_logprob(scheduler, model_output, t, sample, prev_sample=expected)
        torch.testing.assert_close(scored, log_prob, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["sd", "v_prediction"])
def test_batched_timesteps_equal_per_step_diffusers(variant):
    scheduler = _scheduler(variant, 8)
    timesteps = scheduler.timesteps.flip(0)  # one transition per step, in a shuffled order
    n = len(timesteps)
    torch.manual_seed(2)
    sample, model_output, prev = torch.randn(n, 4, 4, 4), torch.randn(n, 4, 4, 4), torch.randn(n, 4, 4, 4)
    mean, std = ddim_step_mean_std(scheduler, model_output, timesteps, sample)
    _, log_prob = ddim_step_with_logprob(scheduler, model_output, timesteps, sample, prev_sample=prev)
    assert std.shape == (n, 1, 1, 1)
    for i, t in enumerate(timesteps):
        expected_mean, expected_std = _diffusers_mean_std(scheduler, model_output[i : i + 1], t, sample[i : i + 1])
        torch.testing.assert_close(mean[i : i + 1], expected_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(std[i].reshape(()), expected_std, rtol=1e-6, atol=0)
        expected_lp = torch.distributions.Normal(expected_mean, expected_std).log_prob(prev[i : i + 1]).mean()
        torch.testing.assert_close(log_prob[i], expected_lp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"clip_sample": True}, "clip_sample"),
        ({"thresholding": True}, "thresholding"),
        ({"prediction_type": "sample"}, "prediction_type"),
    ],
)
def test_refuses_non_gaussian_configurations(config, message):
    scheduler = build_ddim_scheduler(config)
    with pytest.raises(ValueError, match=message):
        validate_scheduler_for_logprob(scheduler, 10)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=message):
        ddim_step_with_logprob(scheduler, torch.randn(1, 4, 4, 4), scheduler.timesteps[0], torch.randn(1, 4, 4, 4))


def test_refuses_zero_sigma_last_step_of_set_alpha_to_one():
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    with pytest.raises(ValueError, match="set_alpha_to_one"):
        validate_scheduler_for_logprob(scheduler, 10)
    scheduler.set_timesteps(10)
    x = torch.randn(2, 4, 4, 4)
    ddim_step_with_logprob(scheduler, torch.randn_like(x), scheduler.timesteps[0], x)  # earlier steps are fine
    with pytest.raises(ValueError, match="σ_t = 0"):
        ddim_step_with_logprob(scheduler, torch.randn_like(x), scheduler.timesteps[-1], x)
    with pytest.raises(ValueError, match="eta"):
        validate_scheduler_for_logprob(build_ddim_scheduler(), 10, eta=0.0)
    validate_scheduler_for_logprob(build_ddim_scheduler(), 10)  # SD's settings pass


def test_refuses_zero_sigma_last_step_without_steps_offset():
    """set_alpha_to_one=False alone is not enough: with steps_offset=0 the last step is timestep 0,
    whose 'previous' ᾱ is ᾱ_0 itself, so σ_t = 0 there too."""
    with pytest.raises(ValueError, match="steps_offset=1"):
        validate_scheduler_for_logprob(build_ddim_scheduler({"steps_offset": 0}), 10)


@pytest.mark.parametrize("guidance_scale", [3.0, 1.0])
def test_sampler_reproduces_the_stock_pipeline(tiny_pipeline, guidance_scale):
    prompts = ["a red circle", "a blue square", "a green dog"]
    trajectory = sample_trajectories(
        tiny_pipeline, prompts, num_inference_steps=6, guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(7),
    )
    stock = tiny_pipeline(
        prompts, num_inference_steps=6, guidance_scale=guidance_scale, eta=1.0,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images
    np.testing.assert_array_equal(trajectory.images, (stock * 255).round().astype(np.uint8))
    assert trajectory.images.dtype == np.uint8 and trajectory.images.shape == (3, 16, 16, 3)
    assert trajectory.latents.shape == (3, 7, 4, 4, 4)
    assert trajectory.log_probs.shape == (3, 6) and trajectory.noise_preds.shape == (3, 6, 4, 4, 4)
    assert (trajectory.negative_prompt_embeds is None) == (guidance_scale <= 1)
    assert torch.isfinite(trajectory.log_probs).all()


def test_stored_log_probs_are_reproduced_by_batched_rescoring(tiny_pipeline):
    """What the policy update recomputes (all steps in one batch, batched timesteps) matches sampling."""
    trajectory = sample_trajectories(
        tiny_pipeline, ["a red circle", "a blue square"], num_inference_steps=5, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
    )
    b, steps = trajectory.batch_size, trajectory.num_steps
    x_t = trajectory.latents[:, :-1].reshape(b * steps, 4, 4, 4)
    x_prev = trajectory.latents[:, 1:].reshape(b * steps, 4, 4, 4)
    timesteps = trajectory.timesteps.repeat(b)
    cond = trajectory.prompt_embeds.repeat_interleave(steps, 0)
    uncond = trajectory.negative_prompt_embeds.repeat_interleave(steps, 0)
    with torch.no_grad():
        output = guided_noise_prediction(tiny_pipeline.unet, x_t, timesteps, cond, uncond, 3.0)
    _, log_prob = ddim_step_with_logprob(tiny_pipeline.scheduler, output, timesteps, x_t, prev_sample=x_prev)
    torch.testing.assert_close(log_prob.reshape(b, steps), trajectory.log_probs, rtol=0, atol=1e-4)
    # and a wrong pairing of steps is clearly detected
    _, shifted = ddim_step_with_logprob(
        tiny_pipeline.scheduler, output, timesteps.roll(1), x_t, prev_sample=x_prev
    )
    assert (shifted.reshape(b, steps) - trajectory.log_probs).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_log_probs_are_reproduced_exactly_by_rescoring(tiny_pipeline, dtype):
    """The step's arithmetic is float32 when sampling and when rescoring, so an unchanged policy has
    ratio exactly 1 in half precision too. (Sampling used to compute μ in the model's dtype and the
    update in float32: |log ρ| ≈ 3e-3 in fp16 and 2e-2 in bf16 on a tiny model, an H100 run of SD v1.5
    in fp16 clipped 57 % of a fresh LoRA's transitions at the paper's 1e-4.)"""
    pipeline = tiny_pipeline.to(dtype=dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        trajectory = sample_trajectories(
            pipeline, ["a red circle", "a blue square", "a green dog"], num_inference_steps=5, guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
        )
    assert trajectory.latents.dtype == torch.float32 and trajectory.log_probs.dtype == torch.float32
    # one trajectory's steps in one batch with batched timesteps: another batch shape, as the update has
    steps = trajectory.num_steps
    x_t, x_prev = trajectory.latents[1, :-1], trajectory.latents[1, 1:]
    cond = trajectory.prompt_embeds[1:2].expand(steps, -1, -1)
    uncond = trajectory.negative_prompt_embeds[1:2].expand(steps, -1, -1)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        output = guided_noise_prediction(pipeline.unet, x_t, trajectory.timesteps, cond, uncond, 3.0)
        _, log_prob = ddim_step_with_logprob(pipeline.scheduler, output, trajectory.timesteps, x_t, prev_sample=x_prev)
    torch.testing.assert_close(log_prob, trajectory.log_probs[1], rtol=0, atol=1e-6)
