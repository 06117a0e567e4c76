"""train_dpok end to end on the tiny pipeline: metrics, checkpoints, exact resume, refusals, learning."""

import logging

import numpy as np
import pytest
import torch

import dpok.rl.state as state_module
import dpok.rl.update as update_module
from dpok.rl import (
    METRIC_NAMES,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    reference_model,
    sample_trajectories,
    train_dpok,
)

TIMING = {"seconds_sampling", "seconds_reward", "seconds_kl_report", "seconds_buffer", "seconds_value", "seconds_policy"}


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_rounds_run_report_metrics_and_keep_the_last_checkpoints(
    make_pipeline, prompts, reward_fn, small_config, tmp_path
):
    seen = []
    result = train_dpok(
        make_pipeline(), prompts, reward_fn, small_config({"runtime.num_rounds": 3}), tmp_path,
        on_round=lambda r, m: seen.append((r, _names(tmp_path))), progress=False,
    )
    assert [r for r, _ in seen] == [1, 2, 3]
    assert seen[0][1] == ["round_000001"]  # the round's checkpoint exists when on_round runs
    assert _names(tmp_path) == ["round_000002", "round_000003"]  # keep_last_checkpoints=2, no temp folders
    assert result.last_checkpoint == tmp_path / "round_000003" and result.resumed_from is None
    assert [row["round"] for row in result.history] == [1, 2, 3]
    for row in result.history:
        assert set(row) == set(METRIC_NAMES)
        assert all(np.isfinite(v) for v in row.values()), row
        assert row["skipped_steps"] == 0 and 0 <= row["reward_min"] <= row["reward_mean"] <= row["reward_max"] <= 1
    # round 1 samples with the fresh adapter (B = 0): the exact KL bound is zero up to rounding
    assert result.history[0]["kl_bound_nats"] < 1e-6
    assert result.history[2]["kl_bound_nats"] > 1e-4
    assert any(v.abs().max() > 0 for k, v in result.lora_state.items() if "lora_B" in k)
    saved = load_checkpoint(tmp_path / "round_000003")
    assert saved.history == result.history and saved.round == 3
    for key, value in result.lora_state.items():
        torch.testing.assert_close(saved.lora[key], value, rtol=0, atol=0)


def test_resumed_run_equals_the_uninterrupted_run(make_pipeline, prompts, reward_fn, small_config, tmp_path):
    overrides = {"runtime.checkpoint_every": 2, "advantage.normalisation": "per_prompt",
                 "advantage.per_prompt_min_count": 2, "advantage.per_prompt_window": 4}
    straight = train_dpok(
        make_pipeline(), prompts, reward_fn, small_config({**overrides, "runtime.num_rounds": 4}), tmp_path / "straight",
        progress=False,
    )
    first = train_dpok(
        make_pipeline(), prompts, reward_fn, small_config({**overrides, "runtime.num_rounds": 2}), tmp_path / "split", progress=False
    )
    assert len(first.history) == 2
    # a fresh process would hold other global RNG states; the checkpoint restores them
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = train_dpok(
        make_pipeline(), prompts, reward_fn, small_config({**overrides, "runtime.num_rounds": 4}), tmp_path / "split", progress=False
    )
    assert resumed.resumed_from == tmp_path / "split" / "round_000002"
    assert [row["round"] for row in resumed.history] == [1, 2, 3, 4]
    assert straight.lora_state.keys() == resumed.lora_state.keys()
    for key in straight.lora_state:
        torch.testing.assert_close(resumed.lora_state[key], straight.lora_state[key], rtol=0, atol=1e-6)
    for a, b in zip(straight.history, resumed.history):
        for key in set(METRIC_NAMES) - TIMING:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9, nan_ok=True), key
    # the runs really trained: the LoRA moved
    assert any(v.abs().max() > 0 for k, v in straight.lora_state.items() if "lora_B" in k)

    # resuming a finished run does nothing; resuming with different settings is refused
    done = train_dpok(
        make_pipeline(), prompts, reward_fn, small_config({**overrides, "runtime.num_rounds": 4}), tmp_path / "split", progress=False
    )
    assert len(done.history) == 4 and done.last_checkpoint == tmp_path / "split" / "round_000004"
    untouched = make_pipeline()
    with pytest.raises(ValueError, match="finetune.rl.policy.learning_rate"):
        train_dpok(untouched, prompts, reward_fn, small_config({**overrides, "runtime.num_rounds": 6, "policy.learning_rate": 0.5}),
                   tmp_path / "split", progress=False)
    assert not getattr(untouched.unet, "peft_config", None)  # refused before the adapter was attached


def test_fresh_run_deletes_old_checkpoints_only_after_its_first_checkpoint(
    make_pipeline, prompts, reward_fn, small_config, tmp_path
):
    old = small_config({"runtime.num_rounds": 3, "runtime.keep_last_checkpoints": 3})
    train_dpok(make_pipeline(), prompts, reward_fn, old, tmp_path, progress=False)
    assert _names(tmp_path) == ["round_000001", "round_000002", "round_000003"]
    seen = {}
    result = train_dpok(
        make_pipeline(), prompts, reward_fn,
        small_config({"runtime.num_rounds": 3, "seed": 1, "runtime.resume": False, "runtime.checkpoint_every": 2, "runtime.keep_last_checkpoints": 3}), tmp_path,
        on_round=lambda r, m: seen.setdefault(r, _names(tmp_path)), progress=False,
    )
    assert result.resumed_from is None and len(result.history) == 3
    assert seen[1] == ["round_000001", "round_000002", "round_000003"]  # nothing deleted before a new checkpoint
    assert seen[2] == ["round_000002"]  # the new run's own round 2 replaced the old run's
    assert _names(tmp_path) == ["round_000002", "round_000003"]
    assert load_checkpoint(latest_checkpoint(tmp_path)).config["seed"] == 1
    assert load_checkpoint(tmp_path / "round_000002").history == result.history[:2]


def test_non_finite_reward_is_an_error_naming_the_prompt(make_pipeline, small_config, tmp_path):
    def reward(images, prompts):
        return np.array([np.nan if p == "a blue square" else 0.5 for p in prompts])

    with pytest.raises(ValueError, match="non-finite reward.*'a blue square'"):
        train_dpok(make_pipeline(), ["a blue square"], reward, small_config(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="one reward per image"):
        train_dpok(
            make_pipeline(), ["a red circle"], lambda i, p: np.zeros(1), small_config(), tmp_path, progress=False
        )
    assert list_checkpoints(tmp_path) == []


def test_non_finite_loss_never_reaches_the_optimiser(
    make_pipeline, prompts, reward_fn, small_config, tmp_path, monkeypatch, caplog
):
    initial = {}
    real_attach = state_module.attach_lora

    def recording_attach(unet, *args):
        params = real_attach(unet, *args)
        initial.update({n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n})
        return params

    real_step = update_module.ddim_step_with_logprob

    def nan_step(*args, **kwargs):
        prev_sample, log_prob = real_step(*args, **kwargs)
        return prev_sample, log_prob + float("nan")

    monkeypatch.setattr(state_module, "attach_lora", recording_attach)
    monkeypatch.setattr(update_module, "ddim_step_with_logprob", nan_step)  # only the update's re-scoring
    pipeline = make_pipeline()
    with caplog.at_level(logging.WARNING, logger="dpok.rl.update"):
        config = small_config({"runtime.num_rounds": 2, "policy.p_step": 3})
        result = train_dpok(pipeline, prompts, reward_fn, config, tmp_path, progress=False)
    assert [row["skipped_steps"] for row in result.history] == [3, 3]
    assert result.skipped_steps == 6
    assert "step skipped" in caplog.text
    final = {n: p.detach() for n, p in pipeline.unet.named_parameters() if "lora_" in n}
    assert final.keys() == initial.keys() and initial
    for name, value in final.items():
        assert torch.equal(value, initial[name]), name
    assert np.isnan(result.history[0]["policy_loss"]) and np.isnan(result.history[0]["grad_norm"])


def test_refuses_a_pipeline_that_already_has_the_adapter_and_bad_prompts(
    make_pipeline, reward_fn, small_config, tmp_path
):
    from dpok.models import attach_lora

    pipeline = make_pipeline()
    attach_lora(pipeline.unet, 4, 4, ["to_q"])
    with pytest.raises(ValueError, match="already has"):
        train_dpok(pipeline, ["a red circle"], reward_fn, small_config(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        train_dpok(make_pipeline(), "a red circle", reward_fn, small_config(), tmp_path, progress=False)


def test_reward_increases_on_an_easy_reward(make_pipeline, reward_fn, small_config, tmp_path):
    """Mean brightness, one prompt. The tiny random VAE moves brightness little (per-image std 0.002),
    so we compare the trained and the pretrained policy on the same 64 noise seeds (common random
    numbers): the paired improvement must be clearly positive."""
    config = small_config({"runtime.num_rounds": 12, "rollout.g_batch": 16, "sampler.num_inference_steps": 6, "policy.p_batch": 32, "policy.accum": 1, "policy.p_step": 4, "policy.buffer_size": 256, "policy.learning_rate": 3e-3, "policy.clip_range": 0.05, "kl.weight": 0.0, "value.enabled": False, "advantage.reward_weight": 1.0, "advantage.normalisation": "per_prompt", "runtime.checkpoint_every": 12, "runtime.kl_report_trajectories": 1})
    pipeline = make_pipeline()
    result = train_dpok(pipeline, ["a red circle"], reward_fn, config, tmp_path, progress=False)
    assert result.history[-1]["kl_bound_nats"] > 1.0

    def rewards() -> np.ndarray:
        generators = [torch.Generator().manual_seed(1000 + i) for i in range(64)]
        trajectory = sample_trajectories(
            pipeline, ["a red circle"] * 64, num_inference_steps=6, guidance_scale=3.0, generator=generators
        )
        return reward_fn(trajectory.images, trajectory.prompts)

    trained = rewards()
    with reference_model(pipeline.unet):
        pretrained = rewards()
    gain = trained - pretrained
    assert gain.mean() / (gain.std() / np.sqrt(len(gain))) > 4, (gain.mean(), gain.std())


def test_baselines_are_the_value_of_each_buffered_transition():
    from dpok.rl import Trajectory, TransitionBuffer
    from dpok.rl.baseline import value_predictions
    from dpok.rl.value import ValueFunction, prompt_text_feature

    torch.manual_seed(0)
    b, steps = 3, 4
    trajectory = Trajectory(
        prompts=["p", "q", "r"], latents=torch.randn(b, steps + 1, 4, 2, 2), timesteps=torch.arange(steps, 0, -1) * 10,
        log_probs=torch.zeros(b, steps), noise_preds=torch.zeros(b, steps, 4, 2, 2),
        prompt_embeds=torch.randn(b, 3, 8), negative_prompt_embeds=None, images=None, guidance_scale=1.0, eta=1.0,
    )
    value_fn = ValueFunction((4, 2, 2), text_dim=8, num_steps=steps)
    buffer = TransitionBuffer(capacity=64)
    buffer.push(trajectory, np.zeros(b), value_predictions(value_fn, trajectory, 0, None, torch.device("cpu")))
    batch = buffer.get(torch.arange(b * steps))
    with torch.no_grad():
        expected = value_fn(batch.latents, batch.step_indices, prompt_text_feature(batch.prompt_embeds))
    torch.testing.assert_close(batch.baselines, expected)


def test_a_step_window_keeps_those_steps_only():
    from dpok.rl import Trajectory

    b, steps = 2, 5
    trajectory = Trajectory(
        prompts=["p", "q"], latents=torch.arange(b * (steps + 1)).float().reshape(b, steps + 1, 1, 1, 1),
        timesteps=torch.arange(steps, 0, -1) * 10, log_probs=torch.arange(b * steps).float().reshape(b, steps),
        noise_preds=torch.zeros(b, steps, 1, 1, 1), prompt_embeds=torch.zeros(b, 3, 8), negative_prompt_embeds=None,
        images=None, guidance_scale=1.0, eta=1.0,
    )
    assert trajectory.window(0, steps) is trajectory
    cut = trajectory.window(0, 2)  # x_T → x_{T−1} → x_{T−2}
    assert cut.num_steps == 2 and cut.latents.shape[1] == 3
    assert cut.timesteps.tolist() == [50, 40] and cut.log_probs.tolist() == [[0.0, 1.0], [5.0, 6.0]]
    late = trajectory.window(3, 5)  # the last two steps: x_2 → x_1 → x_0
    assert late.timesteps.tolist() == [20, 10] and late.log_probs.tolist() == [[3.0, 4.0], [8.0, 9.0]]
    assert late.latents[:, :, 0, 0, 0].tolist() == [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]
    with pytest.raises(ValueError, match="window"):
        trajectory.window(2, 2)
