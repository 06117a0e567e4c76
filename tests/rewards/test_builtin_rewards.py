"""The built-in rewards: the shapes judge and quality, and DDPO's JPEG compressibility."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dpok.rewards import get_reward_fn
from dpok.world import PromptGrammarError, judge, quality, render, sample_scene

PROMPTS = ["four red squares", "a yellow circle and a blue triangle", "a green square at the top", "a blue circle"]


@pytest.fixture()
def images() -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.stack([render(sample_scene(prompt, rng)) for prompt in PROMPTS])


def test_shapes_rewards_wrap_the_world(images: np.ndarray) -> None:
    shuffled = PROMPTS[1:] + PROMPTS[:1]
    assert np.array_equal(get_reward_fn("shapes_judge")(images, shuffled), judge(images, shuffled))
    assert np.array_equal(get_reward_fn("shapes_quality")(images, PROMPTS), quality(images))
    assert get_reward_fn("shapes_judge")(images, PROMPTS) == pytest.approx(1.0)
    with pytest.raises(PromptGrammarError):
        get_reward_fn("shapes_judge")(images, ["a red hexagon"] * 4)


def test_shapes_quality_checks_prompt_count(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        get_reward_fn("shapes_quality")(images, PROMPTS[:3])
    with pytest.raises(TypeError, match="single str"):
        get_reward_fn("shapes_quality")(images, "a blue circle")


def test_jpeg_compressibility_is_negative_kilobytes(images: np.ndarray) -> None:
    scores = get_reward_fn("jpeg_compressibility")(images, PROMPTS)
    for image, score in zip(images, scores):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        assert score == pytest.approx(-len(buffer.getvalue()) / 1000)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    assert np.all(get_reward_fn("jpeg_compressibility")(noise, PROMPTS) < scores.min())


def test_jpeg_compressibility_scaled_variant(images: np.ndarray) -> None:
    raw = get_reward_fn("jpeg_compressibility")(images, PROMPTS)
    scaled = get_reward_fn("jpeg_compressibility", scaled=True)(images, PROMPTS)
    assert np.all((scaled >= 0) & (scaled <= 1))
    assert np.allclose(scaled, 1 + raw * 1000 / (32 * 32 * 3))
    with pytest.raises(ValueError, match=r"quality must be an int in \[1, 100\]"):
        get_reward_fn("jpeg_compressibility", quality=0)


def test_rewards_accept_pil_images(images: np.ndarray) -> None:
    pil = [Image.fromarray(image) for image in images]
    for name in ("shapes_judge", "shapes_quality", "jpeg_compressibility"):
        reward = get_reward_fn(name)
        assert np.array_equal(reward(pil, PROMPTS), reward(images, PROMPTS))
