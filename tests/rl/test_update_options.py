"""The update's options against hand computations: per-step weights, groups with shared noise and
group-relative advantages, step windows, no-CFG updates, the value function's Tweedie features."""

import numpy as np
import pytest
import torch

from dpok.models import build_ddim_scheduler
from dpok.rl import TransitionBuffer, guided_noise_prediction, load_checkpoint, train_dpok
from dpok.rl.baseline import value_variance_ratio, variance_ratio_by_step
from dpok.rl.losses import group_statistics, policy_loss
from dpok.rl.rollout import draw_prompts, sample_round
from dpok.rl.sampling import policy_gradient_scale, predicted_original_sample
from dpok.rl.update import step_weights
from dpok.rl.value import ValueFunction, prompt_text_feature
from helpers import finetune_config


def _closed_form_scale(scheduler, eta: float = 1.0) -> np.ndarray:
    """|c_t|/σ_t from docs/algorithm.md in float64, from the scheduler's ᾱ table alone."""
    alphas = scheduler.alphas_cumprod.double().numpy()
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    final = float(scheduler.final_alpha_cumprod)
    out = []
    for t in scheduler.timesteps.tolist():
        a_t = alphas[t]
        a_prev = alphas[t - stride] if t - stride >= 0 else final
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
        c = np.sqrt(1 - a_prev - sigma**2) - np.sqrt(a_prev) * np.sqrt(1 - a_t) / np.sqrt(a_t)
        out.append(abs(c) / sigma)
    return np.asarray(out)


def test_policy_gradient_scale_is_c_over_sigma_and_peaks_at_the_last_step():
    scheduler = build_ddim_scheduler({})
    scheduler.set_timesteps(20)
    scale = policy_gradient_scale(scheduler, scheduler.timesteps)
    np.testing.assert_allclose(scale.numpy(), _closed_form_scale(scheduler), rtol=1e-4)
    # SD's schedule (steps_offset 1): the step t = 51 → 1 has |c_t|/σ_t ≈ 5.4, every other ≈ 0.6–1.1
    assert scheduler.timesteps[18] == 51 and scale.argmax() == 18
    assert scale[18] == pytest.approx(5.43, abs=0.01) and (scale[:18].max() < 1.2) and scale[19] < 1.2


def test_equalised_step_weights_make_every_trained_step_count_the_same():
    scheduler = build_ddim_scheduler({})
    config = finetune_config({"sampler.num_inference_steps": 10, "policy.step_weighting": "equalise", "policy.train_step_window": (0.0, 0.9)})
    weights = step_weights(scheduler, config)
    scale = policy_gradient_scale(scheduler, scheduler.timesteps)
    weighted = (weights * scale)[:9]
    torch.testing.assert_close(weighted, torch.full_like(weighted, float(scale[:9].mean())))
    assert torch.equal(step_weights(scheduler, finetune_config({"sampler.num_inference_steps": 10, "policy.step_weighting": "none"})), torch.ones(10))


@pytest.mark.parametrize("clip_mode", ["ppo", "dpok_clamp"])
def test_weighted_surrogate_is_the_weighted_mean_of_the_per_transition_terms(clip_mode):
    advantage = torch.tensor([1.0, -2.0, 0.5, 3.0])
    ratio = torch.tensor([1.2, 0.7, 1.0, 0.95])
    weights = torch.tensor([0.5, 2.0, 1.0, 0.1])
    eps = 0.1
    clipped = ratio.clamp(1 - eps, 1 + eps)
    if clip_mode == "ppo":
        terms = torch.maximum(-advantage * ratio, -advantage * clipped)
    else:
        terms = -advantage * clipped
    expected = (weights * terms).sum() / 4
    torch.testing.assert_close(policy_loss(clip_mode, advantage, ratio, eps, weights), expected)
    torch.testing.assert_close(policy_loss(clip_mode, advantage, ratio, eps), terms.mean())


def test_group_statistics_by_hand():
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    rewards = np.array([1.0, 0.0, 0.5, 0.3, 0.3, 0.3, 0.2, 0.6])
    means, scales, varied = group_statistics(groups, rewards, "prompt", eps=0.0)
    np.testing.assert_allclose(means, [0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.4, 0.4])
    np.testing.assert_allclose(scales[:3], np.std([1.0, 0.0, 0.5]))
    np.testing.assert_allclose(scales[6:], 0.2)
    assert varied.tolist() == [True, True, True, False, False, False, True, True]
    _, pooled, _ = group_statistics(groups, rewards, "pooled", eps=0.0)
    centred = np.array([0.5, -0.5, 0.0, -0.2, 0.2])  # the varied groups' rewards minus their group mean
    np.testing.assert_allclose(pooled, np.sqrt(np.mean(centred**2)))


def test_groups_share_their_starting_noise_and_nothing_else(make_pipeline):
    pipeline = make_pipeline()
    config = finetune_config({"rollout.g_batch": 6, "rollout.trajectories_per_prompt": 3, "sampler.num_inference_steps": 3, "rollout.share_initial_noise": True})
    prompts, groups = draw_prompts(["a red circle", "a blue square"], config, round_number=1)
    assert groups == [0, 0, 0, 1, 1, 1] and len(set(prompts[:3])) == 1
    trajectory = sample_round(pipeline, prompts, groups, config, 1)
    x_T, x_0 = trajectory.latents[:, 0], trajectory.latents[:, -1]
    assert torch.equal(x_T[0], x_T[1]) and torch.equal(x_T[0], x_T[2]) and torch.equal(x_T[3], x_T[5])
    assert not torch.equal(x_T[0], x_T[3])
    assert not torch.equal(x_0[0], x_0[1])  # the per-step noise is each trajectory's own
    independent = sample_round(pipeline, prompts, groups, finetune_config({"rollout.g_batch": 6, "rollout.trajectories_per_prompt": 3, "sampler.num_inference_steps": 3, "rollout.share_initial_noise": False}), 1)
    assert not torch.equal(independent.latents[0, 0], independent.latents[1, 0])


def test_without_cfg_the_update_is_the_cfg_update_at_guidance_one(make_pipeline):
    unet = make_pipeline().unet
    torch.manual_seed(0)
    latents = torch.randn(3, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    cond = torch.randn(3, 5, unet.config.cross_attention_dim)
    uncond = torch.randn(3, 5, unet.config.cross_attention_dim)
    timesteps = torch.tensor([901, 501, 101])
    with torch.no_grad():
        guided = guided_noise_prediction(unet, latents, timesteps, cond, uncond, 1.0)
        plain = guided_noise_prediction(unet, latents, timesteps, cond, None, 1.0)
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-6)


def test_only_the_window_steps_enter_the_buffer(make_pipeline, prompts, reward_fn, small_config, tmp_path):
    config = small_config({"runtime.num_rounds": 1, "sampler.num_inference_steps": 4, "policy.train_step_window": [0.5, 1.0], "rollout.g_batch": 4})
    train_dpok(make_pipeline(), prompts, reward_fn, config, tmp_path, progress=False)
    buffer = TransitionBuffer(config.policy.buffer_size)
    buffer.load_state_dict(load_checkpoint(tmp_path / "round_000001").buffer)
    batch = buffer.get(torch.arange(len(buffer)))
    assert len(buffer) == 4 * 2 and sorted(set(batch.step_indices.tolist())) == [2, 3]
    scheduler = build_ddim_scheduler({})
    scheduler.set_timesteps(4)
    assert sorted(set(batch.timesteps.tolist())) == sorted(scheduler.timesteps[2:].tolist())


def test_uniform_groups_are_left_out(make_pipeline, prompts, small_config, tmp_path):
    config = small_config({"runtime.num_rounds": 2, "rollout.g_batch": 4, "rollout.trajectories_per_prompt": 2, "advantage.normalisation": "group"})
    result = train_dpok(make_pipeline(), prompts, lambda images, p: np.full(len(p), 0.5), config, tmp_path,
                        progress=False)
    assert [row["uniform_groups"] for row in result.history] == [2, 2]
    assert all(np.isnan(row["policy_loss"]) for row in result.history)  # nothing to learn from
    assert all(v.abs().max() == 0 for k, v in result.lora_state.items() if "lora_B" in k)


def test_tweedie_estimate_equals_diffusers_pred_original_sample():
    scheduler = build_ddim_scheduler({})
    scheduler.set_timesteps(10)
    torch.manual_seed(1)
    sample, model_output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in scheduler.timesteps[[0, 5, 9]].tolist():
        expected = scheduler.step(model_output, t, sample, eta=1.0, variance_noise=torch.zeros_like(sample))
        ours = predicted_original_sample(scheduler, model_output, torch.tensor([t, t]), sample)
        torch.testing.assert_close(ours, expected.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_tweedie_reward_features_are_the_standardised_rewards_of_decoded_estimates(
    make_pipeline, prompts, small_config, tmp_path
):
    seen = []

    def reward(images, batch_prompts):
        scores = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        seen.append(scores)
        return scores

    config = small_config({"runtime.num_rounds": 1, "rollout.g_batch": 4, "sampler.num_inference_steps": 3, "value.features": "tweedie_reward"})
    result = train_dpok(make_pipeline(), prompts, reward, config, tmp_path, progress=False)
    assert np.isfinite(result.history[0]["value_variance_ratio"])
    buffer = TransitionBuffer(config.policy.buffer_size)
    buffer.load_state_dict(load_checkpoint(tmp_path / "round_000001").buffer)
    batch = buffer.get(torch.arange(len(buffer)))
    latent_size = batch.latents[0].numel()
    assert batch.value_features.shape == (4 * 3, latent_size + 1)
    # reward_normalisation none: the feature is the raw reward of each transition's decoded x̂_0
    estimates = np.concatenate(seen[1:])  # scored in chunks after the trajectories' own rewards
    np.testing.assert_allclose(batch.value_features[:, -1].numpy(), estimates, rtol=1e-6)
    # the last step's x̂_0 estimates the final latent: its reward is close to the trajectory's
    np.testing.assert_allclose(estimates[2::3], seen[0], atol=0.01)


def test_value_function_with_extra_features_needs_them():
    value_fn = ValueFunction((4, 2, 2), text_dim=8, num_steps=3, extra_dim=5)
    latents, steps, text = torch.randn(2, 4, 2, 2), torch.tensor([0, 2]), torch.randn(2, 8)
    assert value_fn(latents, steps, text, torch.randn(2, 5)).shape == (2,)
    with pytest.raises(ValueError, match="5 extra features"):
        value_fn(latents, steps, text)


def test_value_variance_ratio_by_hand():
    targets = torch.tensor([1.0, -1.0, 2.0, 0.0, 5.0, 5.0])
    baselines = torch.tensor([0.5, -0.5, 2.0, 0.0, 1.0, 2.0])
    steps = torch.tensor([0, 0, 1, 1, 2, 2])
    # step 0: residual ±0.5 → var 0.25 / var 1 ; step 1: 0 / 1 ; step 2: targets constant → left out
    assert value_variance_ratio(targets, baselines, steps) == pytest.approx((0.25 + 0.0) / 2)
    assert variance_ratio_by_step(targets, baselines, steps) == pytest.approx({0: 0.25, 1: 0.0})


def test_score_gain_is_the_per_step_ridge_fit_and_starts_the_value_at_the_score_term():
    value_fn = ValueFunction((4, 2, 2), text_dim=8, num_steps=3, extra_dim=2, has_score=True)
    steps = torch.tensor([0, 0, 1, 1, 1])
    features = torch.tensor([[9.0, 1.0], [9.0, -1.0], [9.0, 2.0], [9.0, 0.0], [9.0, -2.0]])
    targets = torch.tensor([0.5, -0.5, 2.0, 1.0, -2.0])
    value_fn.fit_score_gain(steps, features, targets, ridge=0.5)
    expected = [(0.5 + 0.5) / (2 + 0.5 * 2), (4.0 + 4.0) / (8 + 0.5 * 3), 0.0]  # step 2 unseen: stays 0
    torch.testing.assert_close(value_fn.score_gain, torch.tensor(expected))
    latents, text = torch.zeros(5, 4, 2, 2), torch.zeros(5, 8)
    with torch.no_grad():  # the MLP's head starts at zero: V is exactly the score term
        values = value_fn(latents, steps, text, features)
    torch.testing.assert_close(values, torch.tensor(expected)[steps] * features[:, 1])


def test_shrinkage_is_the_decayed_least_squares_gain_clipped_to_zero_one():
    value_fn = ValueFunction((4, 2, 2), text_dim=8, num_steps=4, extra_dim=2, has_score=True)
    assert value_fn.shrinkage().tolist() == [0.0] * 4  # nothing recorded: no baseline yet
    steps = torch.tensor([0, 0, 1, 1, 2, 2])
    first = torch.tensor([1.0, -1.0, 2.0, 1.0, 1.0, 1.0]), torch.tensor([0.5, -0.5, 1.0, 1.0, -1.0, -2.0])
    second = torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 3.0, 3.0, 1.0, 1.0])
    value_fn.record_out_of_sample(steps, *first, decay=0.5)
    value_fn.record_out_of_sample(steps, *second, decay=0.5)
    # λ_t = (0.5 Σ₁ V·r + Σ₂ V·r) / (0.5 Σ₁ V² + Σ₂ V²)
    step0 = (0.5 * (0.5 + 0.5) + 2.0) / (0.5 * 2.0 + 4.0)       # 0.5
    step1 = min(1.0, (0.5 * (2.0 + 1.0) + 6.0) / (0.5 * 5.0 + 2.0))  # 7.5 / 4.5, clipped to 1
    step2 = max(0.0, (0.5 * (-1.0 - 2.0) + 2.0) / (0.5 * 2.0 + 2.0))  # 0.5 / 3
    torch.testing.assert_close(value_fn.shrinkage(), torch.tensor([step0, step1, step2, 0.0]))
    value_fn.record_out_of_sample(torch.tensor([2, 2]), torch.tensor([1.0, 1.0]), torch.tensor([-5.0, -5.0]), 1.0)
    assert value_fn.shrinkage()[2] == 0.0  # a V that points the wrong way is switched off, not reversed


def test_value_shrinkage_baselines_are_the_gain_times_the_out_of_sample_prediction(
    make_pipeline, prompts, small_config, tmp_path
):
    """In the buffer, each round's baselines equal λ_t (from the earlier rounds) times V_φ's prediction;
    the first round's are zero; the ratio reported is that of the shrunk baselines."""
    def reward(images, batch_prompts):
        return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0

    config = small_config({"runtime.num_rounds": 3, "rollout.g_batch": 4, "sampler.num_inference_steps": 3, "value.features": "tweedie_reward", "value.shrinkage": True, "policy.buffer_size": 100, "runtime.checkpoint_every": 1, "runtime.keep_last_checkpoints": 3, "rollout.trajectories_per_prompt": 2, "rollout.share_initial_noise": True, "advantage.normalisation": "group"})
    pipeline = make_pipeline()
    train_dpok(pipeline, prompts, reward, config, tmp_path, progress=False)
    first = TransitionBuffer(config.policy.buffer_size)
    first.load_state_dict(load_checkpoint(tmp_path / "round_000001").buffer)
    assert first.get(torch.arange(len(first))).baselines.abs().max() == 0
    before, after = (load_checkpoint(tmp_path / f"round_00000{r}") for r in (2, 3))
    earlier, buffer = TransitionBuffer(config.policy.buffer_size), TransitionBuffer(config.policy.buffer_size)
    earlier.load_state_dict(before.buffer)
    buffer.load_state_dict(after.buffer)
    assert len(buffer) > len(earlier)
    fresh = buffer.get(torch.arange(len(earlier), len(buffer)))  # round 3's transitions
    unet = pipeline.unet.config
    latent_shape = (unet.in_channels, unet.sample_size, unet.sample_size)
    value_fn = ValueFunction(latent_shape, unet.cross_attention_dim, num_steps=3,
                             extra_dim=int(np.prod(latent_shape)) + 1, has_score=True)
    value_fn.load_state_dict(before.value_function)  # V_φ and its statistics as round 3 found them
    with torch.no_grad():
        prediction = value_fn(fresh.latents, fresh.step_indices, prompt_text_feature(fresh.prompt_embeds),
                              fresh.value_features)
    gains = value_fn.shrinkage()
    assert gains.abs().sum() > 0 and (gains < 1).any()  # a gain that is neither 0 nor 1 somewhere
    torch.testing.assert_close(fresh.baselines, prediction * gains[fresh.step_indices], rtol=1e-5, atol=1e-6)
