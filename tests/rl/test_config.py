"""FinetuneConfig: built from conf/base (its one home), grouped by phase, round trip, and every refusal names
its full key path."""

import dataclasses
import re

import pytest

from dpok.config import SamplerConfig, flatten
from dpok.rl import FinetuneConfig
from dpok.rl.config import RESUMABLE_GROUP, RuntimeConfig
from helpers import base_parameters, finetune_config


def test_conf_base_builds_and_round_trips():
    params = base_parameters()
    config = FinetuneConfig.from_params(params["finetune"]["rl"], params["sampler"])
    assert config.to_dict() == {**params["finetune"]["rl"], "sampler": params["sampler"]}
    assert config.lora.target_modules == tuple(params["finetune"]["rl"]["lora"]["target_modules"])
    rebuilt = FinetuneConfig.from_params({k: v for k, v in config.to_dict().items() if k != "sampler"},
                                         config.sampler)
    assert rebuilt == config


def test_every_field_of_every_group_is_documented():
    groups = [FinetuneConfig, SamplerConfig] + [
        f.type if isinstance(f.type, type) else type(getattr(finetune_config(), f.name))
        for f in dataclasses.fields(FinetuneConfig) if f.name not in ("seed",)
    ]
    undocumented = [f"{cls.__name__}.{f.name}" for cls in groups for f in dataclasses.fields(cls)
                    if f"{f.name}:" not in (cls.__doc__ or "") and cls is not FinetuneConfig]
    assert not undocumented


def test_the_runtime_group_is_what_may_change_on_resume():
    config = finetune_config()
    assert RESUMABLE_GROUP == "runtime" and isinstance(config.runtime, RuntimeConfig)
    assert "runtime" not in config.resumable_dict() and "sampler" in config.resumable_dict()
    assert {k.split(".")[0] for k in flatten(config.to_dict())} == {
        "seed", "sampler", "rollout", "lora", "advantage", "value", "policy", "kl", "runtime"
    }


def test_exact_message_for_a_bad_learning_rate():
    with pytest.raises(ValueError) as error:
        finetune_config({"policy.learning_rate": -1})
    assert str(error.value) == "finetune.rl.policy.learning_rate must be a number > 0, got -1"


def test_yaml_1_1_number_as_text_gets_a_hint():
    with pytest.raises(ValueError, match=r"value\.learning_rate must be a number > 0, got '1e-3' \(YAML 1\.1"):
        finetune_config({"value.learning_rate": "1e-3"})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"policy.learning_rate": 0.0}, "policy.learning_rate"),
        ({"kl.weight": -0.1}, "kl.weight"),
        ({"policy.p_batch": 65, "policy.buffer_size": 64, "value.batch_size": 8}, "policy.p_batch"),
        ({"value.batch_size": 65, "policy.buffer_size": 64, "policy.p_batch": 8}, "value.batch_size"),
        ({"kl.form": "sum"}, "kl.form"),
        ({"policy.clip_mode": "trpo"}, "policy.clip_mode"),
        ({"rollout.g_batch": 0}, "rollout.g_batch"),
        ({"seed": -1}, "seed"),
        ({"policy.clip_range": 0.0}, "policy.clip_range"),
        ({"policy.max_grad_norm": float("nan")}, "policy.max_grad_norm"),
        ({"lora.target_modules": []}, "lora.target_modules"),
        ({"lora.target_modules": "to_q"}, "lora.target_modules"),
        ({"runtime.resume": "yes"}, "runtime.resume"),
        ({"value.enabled": 1}, "value.enabled"),
        ({"value.shrinkage_decay": 1.0}, "value.shrinkage_decay"),
        ({"policy.accum": True}, "policy.accum"),
        ({"runtime.sample_batch_size": 0}, "runtime.sample_batch_size"),
        ({"runtime.keep_last_checkpoints": 0}, "runtime.keep_last_checkpoints"),
        ({"advantage.per_prompt_min_count": 40, "advantage.per_prompt_window": 32}, "advantage.per_prompt_min_count"),
        ({"advantage.per_prompt_scale": "batch"}, "advantage.per_prompt_scale"),
        ({"policy.train_step_window": [0.5, 0.5]}, "policy.train_step_window"),
        ({"policy.train_step_window": [0.0, 1.5]}, "policy.train_step_window"),
        ({"policy.train_step_window": 0.9}, "policy.train_step_window"),
        ({"policy.step_weighting": "sqrt"}, "policy.step_weighting"),
        ({"value.features": "pixels"}, "value.features"),
        ({"advantage.normalisation": "batch"}, "advantage.normalisation"),
        ({"advantage.normalisation": "group", "rollout.trajectories_per_prompt": 1}, "rollout.trajectories_per_prompt"),
        ({"rollout.share_initial_noise": "yes"}, "rollout.share_initial_noise"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=re.escape(f"finetune.rl.{key} must be")):
        finetune_config(overrides)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"sampler.eta": 0.0}, "eta"), ({"sampler.eta": 1.5}, "eta"),
     ({"sampler.num_inference_steps": 2.5}, "num_inference_steps"), ({"sampler.guidance_scale": -1}, "guidance_scale")],
)
def test_the_shared_sampler_is_validated_as_sampler(overrides, key):
    with pytest.raises(ValueError, match=rf"^sampler\.{key} must be"):
        finetune_config(overrides)


def test_unknown_and_missing_keys_are_refused_with_their_path():
    params = base_parameters()
    rl, sampler = params["finetune"]["rl"], params["sampler"]
    with pytest.raises(ValueError, match=r"unknown key\(s\) finetune\.rl\.policy\.learning_rte;"):
        FinetuneConfig.from_params({**rl, "policy": {**rl["policy"], "learning_rte": 1e-4}}, sampler)
    with pytest.raises(ValueError, match=r"unknown key\(s\) finetune\.rl\.learning_rate;"):
        FinetuneConfig.from_params({**rl, "learning_rate": 1e-4}, sampler)  # the flat layout of before
    del rl["value"]["steps"]
    with pytest.raises(ValueError, match=r"missing key\(s\) finetune\.rl\.value\.steps; conf/base"):
        FinetuneConfig.from_params(rl, sampler)


def test_trajectories_per_prompt_must_divide_g_batch():
    config = finetune_config({"rollout.g_batch": 16, "rollout.trajectories_per_prompt": 4})
    assert config.rollout.trajectories_per_prompt == 4 and config.rollout.prompts_per_round == 4
    with pytest.raises(ValueError, match="finetune.rl.rollout.trajectories_per_prompt must be a divisor of "
                                         r"finetune.rl.rollout.g_batch \(16\)"):
        finetune_config({"rollout.g_batch": 16, "rollout.trajectories_per_prompt": 3})


def test_one_fallback_for_the_sampler_chunk():
    assert finetune_config({"rollout.g_batch": 16}).sample_chunk() == 16
    assert finetune_config({"rollout.g_batch": 16}).sample_chunk(world_size=3) == 6
    assert finetune_config({"rollout.g_batch": 16, "runtime.sample_batch_size": 4}).sample_chunk(world_size=3) == 4
