"""Shared ground truth for the shapes-world tests: clean renders of every category, fixed seeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from dpok.world import CATEGORIES, Scene, enumerate_prompts, render, sample_scene

SCENES_PER_CATEGORY = 500


@dataclass(frozen=True)
class CleanSet:
    """Scenes sampled for the prompts of one category (cycling through them) and their renders."""

    prompts: list[str]
    scenes: list[Scene]
    images: np.ndarray


def make_clean_set(prompts: list[str], count: int, seed: int, size: int = 32) -> CleanSet:
    rng = np.random.default_rng(seed)
    chosen = [prompts[i % len(prompts)] for i in range(count)]
    scenes = [sample_scene(prompt, rng, size=size) for prompt in chosen]
    return CleanSet(prompts=chosen, scenes=scenes, images=np.stack([render(scene) for scene in scenes]))


@pytest.fixture(scope="session")
def clean_sets() -> dict[str, CleanSet]:
    """500 ground-truth renders per category (every prompt of the category, cycled)."""
    return {
        category: make_clean_set(enumerate_prompts(category), SCENES_PER_CATEGORY, seed=index)
        for index, category in enumerate(CATEGORIES)
    }


@pytest.fixture(scope="session")
def clean_images(clean_sets: dict[str, CleanSet]) -> np.ndarray:
    """All 2000 clean renders in one batch."""
    return np.concatenate([clean_set.images for clean_set in clean_sets.values()])
