"""The `imagereward` and `aesthetic` rewards: paths checked when built, weights loaded once on first use,
scores from uint8 arrays or PIL images, combinable by weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dpok.models.aesthetic as aesthetic_models
import dpok.models.imagereward as imagereward_models
from dpok.rewards import available_rewards, get_reward_fn, weighted_reward

PROMPTS = ["a green colored rabbit.", "a cat and a dog.", "a dog on the moon."]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_models")
    return {
        "imagereward": imagereward_models.write_tiny_imagereward(root / "imagereward"),
        "aesthetic": aesthetic_models.write_tiny_aesthetic(root / "aesthetic"),
    }


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)


def test_both_rewards_are_registered():
    assert {"imagereward", "aesthetic"} <= set(available_rewards())


def test_weights_load_on_the_first_call_only(files, images, monkeypatch):
    loads = []
    real_load = imagereward_models.load_imagereward

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(imagereward_models, "load_imagereward", counting_load)
    reward = get_reward_fn("imagereward", **files["imagereward"], device="cpu")
    assert loads == []  # building (what parameter validation does) loads nothing
    first = reward(images, PROMPTS)
    second = reward(images, PROMPTS)
    assert len(loads) == 1 and first.dtype == np.float64 and first.shape == (3,)
    np.testing.assert_array_equal(first, second)


def test_imagereward_scores_are_the_models(files, images):
    reward = get_reward_fn("imagereward", **files["imagereward"], device="cpu", batch_size=2)
    scorer = imagereward_models.load_imagereward(**files["imagereward"], device="cpu")
    expected = scorer.score(aesthetic_models.pil_resize_crop(images, scorer.model.image_size), PROMPTS).double().numpy()
    np.testing.assert_allclose(reward(images, PROMPTS), expected, rtol=0, atol=1e-5)
    as_pil = [Image.fromarray(image) for image in images]
    np.testing.assert_allclose(reward(as_pil, PROMPTS), reward(images, PROMPTS), rtol=0, atol=0)


def test_rewards_combine_by_weight(files, images):
    combined = weighted_reward(
        {"imagereward": 1.0, "aesthetic": 0.1},
        imagereward=dict(files["imagereward"], device="cpu"),
        aesthetic=dict(files["aesthetic"], device="cpu"),
    )
    ir = get_reward_fn("imagereward", **files["imagereward"], device="cpu")(images, PROMPTS)
    aes = get_reward_fn("aesthetic", **files["aesthetic"], device="cpu")(images, PROMPTS)
    np.testing.assert_allclose(combined(images, PROMPTS), ir + 0.1 * aes, rtol=0, atol=1e-12)
    assert not np.allclose(aes, aes[0])  # images are told apart


@pytest.mark.parametrize(
    "reward, option, value, message",
    [
        ("imagereward", "checkpoint", "nowhere/ImageReward.pt",
         r"`checkpoint` file 'nowhere/ImageReward.pt' does not exist"),
        ("imagereward", "med_config", "nowhere/med_config.json", r"`med_config` file .* does not exist.*docs/sd15.md"),
        ("imagereward", "tokenizer", "no-such-org/no-such-tokenizer",
         r"`tokenizer` .* not in the hub cache, and the hub is offline"),
        ("aesthetic", "mlp_weights", "nowhere/sac+logos+ava1-l14-linearMSE.pth",
         r"`mlp_weights` file .* does not exist"),
        ("aesthetic", "clip_model", "no-such-org/no-such-clip", r"`clip_model` .* not in the hub cache"),
    ],
)
def test_bad_paths_fail_when_the_reward_is_built_naming_the_option(files, reward, option, value, message):
    with pytest.raises(FileNotFoundError, match=message):
        get_reward_fn(reward, **{**files[reward], option: value})


def test_a_folder_that_is_no_model_folder_is_refused(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        get_reward_fn("aesthetic", **{**files["aesthetic"], "clip_model": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="has no tokenizer_config.json"):
        get_reward_fn("imagereward", **{**files["imagereward"], "tokenizer": str(tmp_path)})


def test_device_dtype_and_batch_size_are_checked_when_built(files):
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        get_reward_fn("imagereward", **files["imagereward"], dtype="half")
    with pytest.raises(ValueError, match="device must be"):
        get_reward_fn("aesthetic", **files["aesthetic"], device="gpu")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        get_reward_fn("aesthetic", **files["aesthetic"], batch_size=0)


def test_the_reward_refuses_a_prompt_count_mismatch(files, images):
    reward = get_reward_fn("aesthetic", **files["aesthetic"], device="cpu")
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        reward(images, PROMPTS[:2])


def test_scores_do_not_depend_on_the_global_rng(files, images):
    reward = get_reward_fn("imagereward", **files["imagereward"], device="cpu")
    torch.manual_seed(1)
    first = reward(images, PROMPTS)
    torch.manual_seed(2)
    np.testing.assert_array_equal(reward(images, PROMPTS), first)
