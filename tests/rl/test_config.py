"""FinetuneConfig: defaults valid, round trip, and every refusal names its key."""

import dataclasses

import pytest

from dpok.rl import SHAPES_LORA_TARGETS, FinetuneConfig


def test_defaults_are_valid_and_round_trip():
    config = FinetuneConfig()
    assert config.lora_target_modules == SHAPES_LORA_TARGETS
    data = config.to_dict()
    assert isinstance(data["lora_target_modules"], list)
    assert FinetuneConfig.from_dict(data) == config
    custom = FinetuneConfig.from_dict({"learning_rate": 1e-4, "lora_target_modules": ["to_q"]})
    assert custom.lora_target_modules == ("to_q",)
    undocumented = [f.name for f in dataclasses.fields(FinetuneConfig) if f"{f.name}:" not in FinetuneConfig.__doc__]
    assert not undocumented


def test_exact_message_for_a_bad_learning_rate():
    with pytest.raises(ValueError) as error:
        FinetuneConfig(learning_rate=-1)
    assert str(error.value) == "finetune.rl.learning_rate must be > 0, got -1"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"kl_weight": -0.1}, "kl_weight"),
        ({"p_batch": 65, "buffer_size": 64, "value_batch_size": 8}, "p_batch"),
        ({"value_batch_size": 65, "buffer_size": 64, "p_batch": 8}, "value_batch_size"),
        ({"kl_form": "sum"}, "kl_form"),
        ({"clip_mode": "trpo"}, "clip_mode"),
        ({"eta": 0.0}, "eta"),
        ({"eta": 1.5}, "eta"),
        ({"g_batch": 0}, "g_batch"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"seed": -1}, "seed"),
        ({"clip_range": 0.0}, "clip_range"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm"),
        ({"lora_target_modules": []}, "lora_target_modules"),
        ({"lora_target_modules": "to_q"}, "lora_target_modules"),
        ({"resume": "yes"}, "resume"),
        ({"use_value_function": 1}, "use_value_function"),
        ({"accum": True}, "accum"),
        ({"sample_batch_size": 0}, "sample_batch_size"),
        ({"keep_last_checkpoints": 0}, "keep_last_checkpoints"),
        ({"per_prompt_min_count": 40, "per_prompt_window": 32}, "per_prompt_min_count"),
        ({"per_prompt_scale": "batch"}, "per_prompt_scale"),
        ({"train_step_window": [0.5, 0.5]}, "train_step_window"),
        ({"train_step_window": [0.0, 1.5]}, "train_step_window"),
        ({"train_step_window": 0.9}, "train_step_window"),
        ({"step_weighting": "sqrt"}, "step_weighting"),
        ({"value_features": "pixels"}, "value_features"),
        ({"reward_normalisation": "batch"}, "reward_normalisation"),
        ({"reward_normalisation": "group", "trajectories_per_prompt": 1}, "trajectories_per_prompt"),
        ({"share_initial_noise": "yes"}, "share_initial_noise"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"finetune\.rl\.{key} must be"):
        FinetuneConfig(**overrides)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match=r"unknown key\(s\) finetune\.rl\.learning_rte;"):
        FinetuneConfig.from_dict({"learning_rte": 1e-4})


def test_trajectories_per_prompt_must_divide_g_batch():
    import pytest

    from dpok.rl import FinetuneConfig

    assert FinetuneConfig(g_batch=16, trajectories_per_prompt=4).trajectories_per_prompt == 4
    with pytest.raises(ValueError, match="finetune.rl.trajectories_per_prompt must be a divisor of finetune.rl.g_batch"):
        FinetuneConfig(g_batch=16, trajectories_per_prompt=3)
