"""Fixtures for the DPOK library tests: tiny pipelines, a simple reward, a small fast config."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dpok.rl import FinetuneConfig
from helpers import finetune_config

PROMPTS = ["a red circle", "a blue square", "a green circle on the left"]


@pytest.fixture(scope="module")
def _base_pipeline():
    from dpok.models import build_tiny_pipeline

    pipeline = build_tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def make_pipeline(_base_pipeline):
    """Factory of fresh, identical tiny pipelines (several per test where a run is repeated).

    Copies of one build: two calls of ``build_tiny_pipeline(0)`` are not identical, because the BPE
    trainer behind its word tokenizer breaks ties differently each time, so prompts get other token
    ids (and so other embeddings) from one build to the next.
    """

    def make():
        return copy.deepcopy(_base_pipeline)

    return make


def brightness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Mean pixel value in [0, 1]: an easy reward that needs no model."""
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3
    assert len(prompts) == len(images)
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0


@pytest.fixture
def reward_fn():
    return brightness


@pytest.fixture
def prompts() -> list[str]:
    return list(PROMPTS)


# A config small enough for a round to take a fraction of a second, with the paper's objective (raw
# rewards, independent trajectories, V on the latent, steps alike), which most trainer tests check
# against; tests of the other options set them. Everything not listed comes from conf/base.
SMALL = {
    "seed": 0,
    "sampler.num_inference_steps": 4,
    "rollout.g_batch": 4,
    "rollout.trajectories_per_prompt": 1,
    "rollout.share_initial_noise": False,
    "policy.p_batch": 8,
    "policy.accum": 2,
    "policy.p_step": 2,
    "policy.buffer_size": 64,
    "policy.step_weighting": "none",
    "value.batch_size": 16,
    "value.steps": 2,
    "value.features": "latent",
    "value.shrinkage": False,
    "value.learning_rate": 1e-4,
    "advantage.normalisation": "none",
    "advantage.reward_weight": 10.0,
    "advantage.per_prompt_min_count": 8,
    "advantage.per_prompt_scale": "prompt",
    "runtime.num_rounds": 3,
    "runtime.kl_report_trajectories": 2,
    "runtime.checkpoint_every": 1,
    "runtime.keep_last_checkpoints": 2,
}


@pytest.fixture
def small_config():
    """``make(overrides) -> FinetuneConfig``: :data:`SMALL` with ``{"dotted.key": value}`` overrides."""

    def make(overrides: dict | None = None) -> FinetuneConfig:
        return finetune_config({**SMALL, **(overrides or {})})

    return make
