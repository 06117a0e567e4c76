"""The judge: text-image alignment of the shapes world, computed exactly by code.

It plays the role ImageReward plays in the paper, except that it is right by construction.

Rules. Objects are read by :mod:`dpok.world.detect`: each pixel is background, a palette colour
(within 60 RGB units of the line from the background to it, and at least half-way along it, so a
blurred edge is cut where the sharp edge was) or off-palette; 8-connected components of one colour
are objects, specks under 6 px at 32x32 are dropped; shape from fill ratio, centroid height and
aspect ratio, ``None`` when no shape fits. The prompt is parsed into *slots*: one
per object it asks for, each with a colour, a shape and, for location prompts, a side. Then

1. A slot filled by a detected object costs, for that object's attributes,
   ``([colour wrong] + [shape wrong] + side_violation) / k``, where ``k`` is the count of the slot's
   group. Dividing by ``k`` makes a wrong word cost the same whatever the count: "three blue
   squares" drawn as three blue circles has one violation, like "a blue square" drawn as a circle.
   An object without a known shape has the wrong shape.
2. ``side_violation`` (location prompts): let ``depth`` be how far the centroid lies inside the named
   half, as a fraction of the canvas (left: ``(W/2 - cx) / W``, top: ``(H/2 - cy) / H``, ...). It is
   0 for ``depth >= 1/16`` (2 px), 1 for ``depth <= -1/16`` and linear in between: partial credit
   near the midline, where a small move fixes it.
3. A slot left empty costs 1 (a missing object); a detected object filling no slot costs 1 (an
   object the prompt did not ask for). So a count off by ``d`` costs at least ``d``.
4. Slots are filled one-to-one so that the total cost ``V`` is smallest (filling a slot only pays
   when it costs less than the 2 of a missing plus an extra object).
5. ``score = exp(-V)``: 1 for an exact match; each violated fact of the prompt multiplies the score
   by 1/e (0.37), so a count off by one scores 0.37 and off by three 0.05; two wrong facts 0.14.

Why a product (``exp`` of a sum) and not the arithmetic mean of per-constraint scores: prompts are
conjunctions. For "a red circle and a green square" judged on an image of a red circle and a
yellow square, a mean would give at least one half for the red circle alone, so a wrong image of a
two-object prompt would score like a half-right one; the product gives 0.37 (one wrong colour), as
for any single wrong fact. The partial credit stays: every violation removed raises the reward.

Deliberately not judged: object size, exact position (outside location prompts) and off-palette
pixels. A canvas flooded red is "a red square" to the judge, which is the reward hack the quality
score (:mod:`dpok.world.quality`) and the KL regulariser are there to catch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dpok.images import to_image_batch
from dpok.world.detect import Detections, detect_batch
from dpok.world.grammar import COLORS, SHAPES, ObjectSpec, PromptGrammarError, PromptSpec, parse_prompt

# Full side credit from 2 px (at 32x32) inside the named half, none from 2 px beyond the midline.
SIDE_TOLERANCE = 1 / 16
_COST_MISSING = 1.0
_COST_EXTRA = 1.0


def check_prompts(prompts: Any, num_images: int) -> list[str]:
    """Validate that ``prompts`` is a list of ``num_images`` strings (one per image)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, one per image, got a single str; wrap it: [prompt]")
    if not isinstance(prompts, Sequence) and not isinstance(prompts, np.ndarray):
        raise TypeError(f"prompts must be a list of strings, one per image, got {type(prompts).__name__}")
    prompts = list(prompts)
    if len(prompts) != num_images:
        raise ValueError(f"got {num_images} images but {len(prompts)} prompts; pass exactly one prompt per image")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{index}] must be a str, got {type(prompt).__name__}: {prompt!r}")
    return prompts


def parse_prompts(prompts: Sequence[str]) -> list[PromptSpec]:
    """Parse each distinct prompt once (the RL loop repeats a few prompts many times)."""
    parsed: dict[str, PromptSpec] = {}
    specs = []
    for index, prompt in enumerate(prompts):
        if prompt not in parsed:
            try:
                parsed[prompt] = parse_prompt(prompt)
            except PromptGrammarError as error:
                raise PromptGrammarError(f"prompts[{index}]: {error}") from error
        specs.append(parsed[prompt])
    return specs


def _side_violation(side: str | None, cx: np.ndarray, cy: np.ndarray, height: int, width: int) -> np.ndarray:
    if side is None:
        return np.zeros_like(cx)
    depth = {
        "left": (width / 2 - cx) / width,
        "right": (cx - width / 2) / width,
        "top": (height / 2 - cy) / height,
        "bottom": (cy - height / 2) / height,
    }[side]
    return np.clip(0.5 - depth / (2 * SIDE_TOLERANCE), 0.0, 1.0)


def _slot_costs(spec_group: ObjectSpec, rows: slice, detections: Detections, height: int, width: int) -> np.ndarray:
    """Rule 1: the cost of filling one slot of ``spec_group`` with each object in ``rows``."""
    wrong = (detections.color[rows] != COLORS.index(spec_group.color)).astype(np.float64)
    wrong += detections.shape[rows] != SHAPES.index(spec_group.shape)
    wrong += _side_violation(spec_group.side, detections.cx[rows], detections.cy[rows], height, width)
    return wrong / spec_group.count


def _violations_one_group(costs: np.ndarray, wanted: int) -> float:
    """Rules 3-4 for identical slots: fill them with the cheapest objects while that pays."""
    cheapest = np.sort(costs)[:wanted]
    filled = cheapest[cheapest < _COST_MISSING + _COST_EXTRA]
    matched = len(filled)
    return float(filled.sum()) + (wanted - matched) * _COST_MISSING + (len(costs) - matched) * _COST_EXTRA


def _violations_two_slots(costs_a: np.ndarray, costs_b: np.ndarray) -> float:
    """Rules 3-4 for a composition prompt: two different single slots."""
    n = len(costs_a)
    # Saving of filling a slot relative to leaving it empty and the object extra.
    saving_a = _COST_MISSING + _COST_EXTRA - costs_a
    saving_b = _COST_MISSING + _COST_EXTRA - costs_b
    best = 0.0
    if n:
        best = max(best, float(saving_a.max()), float(saving_b.max()))
    if n >= 2:
        pairs = saving_a[:, None] + saving_b[None, :]
        np.fill_diagonal(pairs, -np.inf)
        best = max(best, float(pairs.max()))
    return 2 * _COST_MISSING + n * _COST_EXTRA - best


def violations(detections: Detections, specs: Sequence[PromptSpec]) -> np.ndarray:
    """The total violation ``V`` (rules 1-4) of each image against its prompt."""
    if len(specs) != detections.num_images:
        raise ValueError(f"got {detections.num_images} images but {len(specs)} prompts")
    height, width = detections.pixel_class.shape[1:]
    result = np.empty(len(specs), dtype=np.float64)
    for index, spec in enumerate(specs):
        rows = slice(int(detections.starts[index]), int(detections.starts[index + 1]))
        if len(spec.groups) == 1:
            group = spec.groups[0]
            result[index] = _violations_one_group(_slot_costs(group, rows, detections, height, width), group.count)
        else:
            first, second = spec.groups
            result[index] = _violations_two_slots(
                _slot_costs(first, rows, detections, height, width),
                _slot_costs(second, rows, detections, height, width),
            )
    return result


def judge(images: Any, prompts: Sequence[str]) -> np.ndarray:
    """Alignment of each image with its prompt, ``exp(-V)`` in [0, 1] (float64, one per image).

    Args:
        images: uint8 ``(N, H, W, 3)`` array, or a list of RGB PIL images / ``(H, W, 3)`` uint8 arrays.
        prompts: ``N`` prompts of the grammar (:func:`dpok.world.parse_prompt`).

    Raises:
        TypeError / ValueError: malformed images or prompts, with the expected form in the message.
        PromptGrammarError: a prompt outside the grammar (a ValueError).
    """
    batch = to_image_batch(images)
    specs = parse_prompts(check_prompts(prompts, len(batch)))
    return np.exp(-violations(detect_batch(batch), specs))
