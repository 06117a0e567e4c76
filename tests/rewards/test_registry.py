"""The reward registry: names to factories, validated outputs, weighted sums."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from dpok.rewards import (
    UnknownRewardError,
    available_rewards,
    get_reward_fn,
    register_reward,
    registry,
    weighted_reward,
)
from dpok.world import render, sample_scene

PROMPTS = ["a red circle", "two blue squares", "a green triangle on the left"]


@pytest.fixture()
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([render(sample_scene(prompt, rng)) for prompt in PROMPTS])


@pytest.fixture()
def scratch_rewards() -> Iterator[None]:
    """Lets a test register rewards and removes them afterwards."""
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_builtin_rewards_are_registered() -> None:
    assert {"shapes_judge", "shapes_quality", "jpeg_compressibility"} <= set(available_rewards())
    assert available_rewards() == sorted(available_rewards())


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(UnknownRewardError) as error:
        get_reward_fn("imagereward_v9")
    assert isinstance(error.value, KeyError)
    message = str(error.value)
    assert "'imagereward_v9'" in message and "shapes_judge" in message and "register_reward" in message


def test_factory_options_are_checked() -> None:
    with pytest.raises(TypeError, match=r"does not accept \['colour'\].*quality"):
        get_reward_fn("jpeg_compressibility", colour=1)


@pytest.mark.usefixtures("scratch_rewards")
def test_rewards_register_as_factories_with_options(images: np.ndarray) -> None:
    @register_reward("constant")
    def constant(value: float = 1.0):  # noqa: ANN202
        return lambda images, prompts: np.full(len(prompts), value)

    assert "constant" in available_rewards()
    assert np.array_equal(get_reward_fn("constant", value=2.5)(images, PROMPTS), [2.5] * 3)
    register_reward("constant")(constant)  # re-registering the same factory (a re-import) is fine
    with pytest.raises(ValueError, match="already registered"):
        register_reward("constant")(lambda: (lambda images, prompts: np.zeros(len(prompts))))
    register_reward("constant", overwrite=True)(lambda: (lambda images, prompts: np.zeros(len(prompts))))
    assert np.array_equal(get_reward_fn("constant")(images, PROMPTS), [0, 0, 0])


@pytest.mark.usefixtures("scratch_rewards")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_rejected(images: np.ndarray, bad: float) -> None:
    register_reward("broken")(lambda: (lambda images, prompts: np.array([0.5, bad, 0.1])))
    with pytest.raises(ValueError, match=r"'broken'.*non-finite.*\[1\]"):
        get_reward_fn("broken")(images, PROMPTS)


@pytest.mark.usefixtures("scratch_rewards")
def test_wrong_number_of_scores_is_rejected(images: np.ndarray) -> None:
    register_reward("short")(lambda: (lambda images, prompts: np.zeros(2)))
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(3,\)"):
        get_reward_fn("short")(images, PROMPTS)


def test_weighted_reward_is_the_weighted_sum(images: np.ndarray) -> None:
    combined = weighted_reward(
        {"shapes_judge": 1.0, "shapes_quality": 0.5, "jpeg_compressibility": -0.2},
        jpeg_compressibility={"quality": 50},
    )
    judge_scores = get_reward_fn("shapes_judge")(images, PROMPTS)
    quality_scores = get_reward_fn("shapes_quality")(images, PROMPTS)
    jpeg_50 = get_reward_fn("jpeg_compressibility", quality=50)(images, PROMPTS)
    jpeg_95 = get_reward_fn("jpeg_compressibility")(images, PROMPTS)
    assert not np.allclose(jpeg_50, jpeg_95)  # so the next line also shows the options were used
    scores = combined(images, PROMPTS)
    assert scores.dtype == np.float64
    assert np.allclose(scores, 1.0 * judge_scores + 0.5 * quality_scores - 0.2 * jpeg_50)


@pytest.mark.parametrize(
    ("weights", "kwargs", "message"),
    [
        ({}, {}, "non-empty"),
        ({"shapes_judge": float("nan")}, {}, "finite"),
        ({"shapes_judge": float("inf")}, {}, "finite"),
        ({"shapes_judge": "1"}, {}, "finite"),
        ({"shapes_judge": 1.0}, {"jpeg_compressibility": {"quality": 80}}, "no weight"),
    ],
)
def test_weighted_reward_validation(weights: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        weighted_reward(weights, **kwargs)


def test_weighted_reward_unknown_name() -> None:
    with pytest.raises(UnknownRewardError, match="available rewards"):
        weighted_reward({"nope": 1.0})
