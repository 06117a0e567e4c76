"""``policy.objective: nft`` (dpok.rl.nft): the loss against a float64 expansion and its closed-form minimiser,
the optimality map, config checks, and runs of the trainer with it (learning, resume)."""

import contextlib

import numpy as np
import pytest
import torch

from dpok.rl import train_dpok
from dpok.rl.kl import reference_model
from dpok.rl.nft import nft_loss, nft_target, optimality_probability
from dpok.rl.rollout import draw_prompts, sample_round
from dpok.rl.sampling import guided_noise_prediction
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


def test_nft_pulls_the_prediction_to_good_images_and_pushes_it_from_bad_ones(make_pipeline, small_config, tmp_path):
    """One round, the first image of each group rewarded 1 and the others 0: afterwards the guided
    prediction denoises the rewarded images better than the pretrained model does, and better than it
    denoises the others (on forward-process draws of their own, not the training ones). The others need not
    get worse in absolute terms: the tiny random UNet's predictions are far from ε everywhere, and what the
    adapter learns from the rewarded images carries over to all of them."""
    config = small_config({**NFT, "rollout.g_batch": 8, "rollout.trajectories_per_prompt": 4, "runtime.num_rounds": 1,
                           "policy.p_step": 8, "policy.learning_rate": 1e-2, "kl.weight": 0.0})

    def first_of_group(images, prompts):
        return np.array([1.0 if i % 4 == 0 else 0.0 for i in range(len(images))])

    pipeline = make_pipeline()
    prompts = ["a red circle", "a blue square"]
    round_prompts, groups = draw_prompts(prompts, config, 1)
    trajectory = sample_round(pipeline, round_prompts, groups, config, 1)  # the round the run will sample
    train_dpok(pipeline, prompts, first_of_group, config, tmp_path, progress=False)
    scheduler = pipeline.scheduler
    scheduler.set_timesteps(config.sampler.num_inference_steps)
    g = torch.Generator().manual_seed(99)
    x0 = trajectory.latents[:, -1]
    errors = {}
    for model in ("trained", "pretrained"):
        total = torch.zeros(len(x0))
        for _ in range(6):
            t = scheduler.timesteps[torch.randint(len(scheduler.timesteps), (len(x0),), generator=g)]
            noise = torch.randn(x0.shape, generator=g)
            x_t = scheduler.add_noise(x0, noise, t)
            with torch.no_grad(), (reference_model(pipeline.unet) if model == "pretrained" else contextlib.nullcontext()):
                pred = guided_noise_prediction(pipeline.unet, x_t, t, trajectory.prompt_embeds,
                                               trajectory.negative_prompt_embeds, config.sampler.guidance_scale)
            total += (pred - noise).pow(2).flatten(1).mean(1)
        errors[model] = total
    change = errors["trained"] - errors["pretrained"]
    good = torch.tensor([i % 4 == 0 for i in range(len(x0))])
    assert change[good].mean() < 0 and change[good].mean() < change[~good].mean() - 0.1, change
