"""The quality score: a prompt-free "aesthetic" score of the shapes world.

It plays the role of the LAION aesthetic predictor in the paper: it says whether an image looks like
a clean picture of this world, whatever it shows, so that reward hacking (noise, smears, a canvas
flooded with one colour) shows up as a quality drop. It never sees the prompt and never counts or
names colours, so it cannot stand in for the judge.

Rules. Pixels are read as in :mod:`dpok.world.detect`: each is background, one palette colour, or
off-palette, together with its distance to the nearest *pure* reference colour and its *mix* (how
much of its palette colour it holds, against the background). A pixel's *purity* is 1 within
:data:`EXACT_TOLERANCE` (10 RGB units) of a pure reference colour, 0 beyond the colour tolerance
(60), linear in between. Five factors in [0, 1], each exactly 1 on a clean render:

1. ``palette_purity``: mean purity of the pixels that are not background (objects, specks,
   off-palette pixels). Off-palette colours, noisy or smeared objects lower it. 1 if there are none.
2. ``background_cleanliness``: summed purity of background pixels divided by the number of pixels
   that belong to no object. Specks, off-palette stains and a noisy background lower it; 0 when no
   pixel is left outside objects.
3. ``edge_sharpness``: mean crispness ``|2 * mix - 1|`` of edge pixels (pixels whose class differs
   from a 4-neighbour's; off-palette pixels have crispness 0). A sharp edge pixel is all colour or
   all background; a blurred one is a blend. 1 if there are no edges.
4. ``shape_likeness``: area-weighted mean over objects of how well each fits its nearest shape
   prototype (1 within :data:`SHAPE_GOOD` units, 0 at the judge's "no known shape" limit), with speck
   pixels counted as shapeless. 1 if there are no objects.
5. ``coverage``: the fraction of non-background pixels should be what one to four objects of this
   world cover. 1 on ``[COVERAGE_LOW, COVERAGE_HIGH]`` = [1.5 %, 45 %] (clean renders cover 2.4-39 %),
   falling linearly to 0 at :data:`COVERAGE_MAX` (75 %), and to 0.5 for an empty canvas (a clean
   empty image is not the best image: it shows nothing).

``quality = sqrt(palette_purity * background_cleanliness) * edge_sharpness * shape_likeness *
coverage``. Factors 1 and 2 measure one property, colour purity, in two places, so they enter as
their geometric mean (per-pixel noise lowers both and would otherwise count twice); each of the
other defects (smear, shapelessness, flooding) is enough on its own to lower the score.
:func:`quality_factors` returns the factors so reports can say which defect it is.

Calibration on 32x32 renders (means): Gaussian noise of std 8 / 16 / 32 added: 0.89 / 0.66 / 0.24;
Gaussian blur of sigma 0.5 / 0.7 / 1.0: 0.64 / 0.36 / 0.22; pure noise, floods, purple shapes: 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpok.world.detect import (
    BACKGROUND_CLASS,
    COLOR_TOLERANCE,
    OFF_PALETTE_CLASS,
    SHAPE_MATCH_LIMIT,
    Detections,
    detect_batch,
)

EXACT_TOLERANCE = 10.0
SHAPE_GOOD = 2.0
COVERAGE_LOW = 0.015
COVERAGE_HIGH = 0.45
COVERAGE_MAX = 0.75
EMPTY_CANVAS_COVERAGE_SCORE = 0.5

QUALITY_FACTORS = ("palette_purity", "background_cleanliness", "edge_sharpness", "shape_likeness", "coverage")


def _per_image_sum(values: np.ndarray) -> np.ndarray:
    return values.sum(axis=(1, 2), dtype=np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, if_empty: float) -> np.ndarray:
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-12), if_empty)


def factors_from_detections(detections: Detections) -> dict[str, np.ndarray]:
    """The five quality factors (module docstring) of each image, each ``(N,)`` float64 in [0, 1]."""
    classes, distance = detections.pixel_class, detections.pixel_distance
    n, height, width = classes.shape
    purity = np.clip(1 - (distance - EXACT_TOLERANCE) / (COLOR_TOLERANCE - EXACT_TOLERANCE), 0, 1)
    is_background = classes == BACKGROUND_CLASS
    not_background = ~is_background

    palette_purity = _ratio(_per_image_sum(purity * not_background), _per_image_sum(not_background), 1.0)

    object_area = np.bincount(detections.image, weights=detections.area, minlength=n)
    outside_objects = height * width - object_area
    background_cleanliness = _ratio(_per_image_sum(purity * is_background), outside_objects, 0.0)

    edges = np.zeros_like(is_background)
    horizontal = classes[:, :, 1:] != classes[:, :, :-1]
    vertical = classes[:, 1:, :] != classes[:, :-1, :]
    edges[:, :, 1:] |= horizontal
    edges[:, :, :-1] |= horizontal
    edges[:, 1:, :] |= vertical
    edges[:, :-1, :] |= vertical
    # A sharp edge pixel is all one colour or all background (mix 0 or 1); a blurred one is a blend.
    crispness = np.where(classes == OFF_PALETTE_CLASS, 0.0, np.abs(2 * detections.pixel_mix - 1))
    edge_sharpness = _ratio(_per_image_sum(crispness * edges), _per_image_sum(edges), 1.0)

    fit = np.clip(1 - (detections.shape_distance - SHAPE_GOOD) / (SHAPE_MATCH_LIMIT - SHAPE_GOOD), 0, 1)
    weighted_fit = np.bincount(detections.image, weights=detections.area * fit, minlength=n)
    shape_likeness = _ratio(weighted_fit, object_area + detections.speck_area, 1.0)

    covered = _per_image_sum(not_background) / (height * width)
    coverage = np.where(
        covered < COVERAGE_LOW,
        EMPTY_CANVAS_COVERAGE_SCORE + (1 - EMPTY_CANVAS_COVERAGE_SCORE) * covered / COVERAGE_LOW,
        np.clip(1 - (covered - COVERAGE_HIGH) / (COVERAGE_MAX - COVERAGE_HIGH), 0, 1),
    )
    return {
        "palette_purity": palette_purity,
        "background_cleanliness": background_cleanliness,
        "edge_sharpness": edge_sharpness,
        "shape_likeness": shape_likeness,
        "coverage": coverage,
    }


def quality_factors(images: Any) -> dict[str, np.ndarray]:
    """The five quality factors of each image (for reports: which defect lowers the score)."""
    return factors_from_detections(detect_batch(images))


def quality(images: Any) -> np.ndarray:
    """Prompt-free quality of each image in [0, 1] (float64), combined from :func:`quality_factors`.

    Args:
        images: uint8 ``(N, H, W, 3)`` array, or a list of RGB PIL images / ``(H, W, 3)`` uint8 arrays.
    """
    return quality_from_factors(quality_factors(images))


def quality_from_factors(factors: dict[str, np.ndarray]) -> np.ndarray:
    """Combine the factors as the module docstring says."""
    purity = np.sqrt(factors["palette_purity"] * factors["background_cleanliness"])
    return purity * factors["edge_sharpness"] * factors["shape_likeness"] * factors["coverage"]
