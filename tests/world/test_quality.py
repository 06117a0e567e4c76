"""The quality score: top on clean renders, low on noise, floods, smears, blobs and off-palette colour."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import ndimage

from dpok.world import BACKGROUND, PALETTE, quality, quality_factors
from dpok.world.quality import QUALITY_FACTORS

NOISE_LEVELS = (4, 8, 16, 32)


def gaussian_noise_images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(127.5, 64, (count, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_clean_renders_score_top(clean_images: np.ndarray) -> None:
    scores = quality(clean_images)
    assert scores.dtype == np.float64 and scores.shape == (len(clean_images),)
    assert scores.min() >= 0.95


def test_noise_images_score_low() -> None:
    assert quality(gaussian_noise_images(200, seed=0)).max() <= 0.2
    uniform = np.random.default_rng(1).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    assert quality(uniform).max() <= 0.2


@pytest.mark.parametrize("color", sorted(PALETTE))
def test_a_canvas_flooded_with_one_colour_scores_low(color: str) -> None:
    flood = np.empty((1, 32, 32, 3), dtype=np.uint8)
    flood[:] = PALETTE[color]
    assert quality(flood)[0] <= 0.3


def test_noise_on_renders_lowers_the_score_monotonically(clean_images: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    renders = clean_images[::4]
    means = [quality(renders).mean()]
    for std in NOISE_LEVELS:
        noisy = np.clip(renders + rng.normal(0, std, renders.shape), 0, 255).astype(np.uint8)
        means.append(quality(noisy).mean())
    means.append(quality(gaussian_noise_images(len(renders), seed=3)).mean())
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert means[1] > 0.9 and means[-2] < 0.5  # faint noise barely matters, strong noise does


def test_smears_blobs_and_off_palette_colour_score_low(clean_images: np.ndarray) -> None:
    renders = clean_images[:200]
    blurred = ndimage.gaussian_filter(renders.astype(np.float64), sigma=(0, 1.0, 1.0, 0)).round().astype(np.uint8)
    assert quality(blurred).mean() < 0.4
    assert quality_factors(blurred)["edge_sharpness"].mean() < 0.5

    recoloured = renders.copy()
    recoloured[(renders != BACKGROUND).any(-1)] = (150, 60, 200)  # purple is not in the palette
    assert quality(recoloured).max() <= 0.2

    bar = np.empty((1, 32, 32, 3), dtype=np.uint8)
    bar[:] = BACKGROUND
    bar[0, 14:17, 4:28] = PALETTE["green"]  # flat, clean, but no known shape
    factors = quality_factors(bar)
    assert factors["shape_likeness"][0] == 0 and factors["palette_purity"][0] == 1
    assert quality(bar)[0] <= 0.2


def test_an_empty_canvas_is_clean_but_not_top() -> None:
    empty = np.empty((1, 32, 32, 3), dtype=np.uint8)
    empty[:] = BACKGROUND
    assert quality(empty)[0] == pytest.approx(0.5)


def test_factors_are_bounded_and_prompt_free(clean_images: np.ndarray) -> None:
    mixed = np.concatenate([clean_images[:50], gaussian_noise_images(50, seed=4)])
    factors = quality_factors(mixed)
    assert tuple(factors) == QUALITY_FACTORS
    for values in factors.values():
        assert values.shape == (100,) and np.all((values >= 0) & (values <= 1))
    assert list(inspect.signature(quality).parameters) == ["images"]
    assert np.array_equal(quality(mixed), quality(list(mixed)))
