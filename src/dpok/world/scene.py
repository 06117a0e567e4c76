"""Scenes of the shapes world and a sampler that turns a prompt into a random scene satisfying it.

A scene is a list of solid objects on a flat canvas. The sampler draws exactly the objects a prompt
asks for and nothing else, so every prompt has ground-truth images (for pretraining the base model
and for checking the judge). Geometry is defined as fractions of the canvas side, so a 64x64 world
looks like an upscaled 32x32 one; numbers in comments are pixels at 32x32. Sampled objects sit on
whole-pixel boxes (see :mod:`dpok.world.templates` for why).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpok.world.grammar import COLORS, SHAPES, PromptSpec, parse_prompt
from dpok.world.templates import template_centroid

# 7-10 px: large enough that circle, square and triangle masks differ clearly, small enough that four
# objects fit with gaps.
OBJECT_SIZE_RANGE: tuple[float, float] = (7 / 32, 10 / 32)
# Boxes keep 2 px from the border and 3 px from each other: objects never touch, and stay apart
# even when a small diffusion model blurs their edges by a pixel.
CANVAS_MARGIN: float = 2 / 32
OBJECT_GAP: float = 3 / 32
# Location prompts put the object's centroid >= 3.2 px inside the named half, so the judge's side
# test (full credit from 2 px on) is never borderline on ground-truth scenes.
SIDE_CLEARANCE: float = 0.1
MIN_CANVAS_SIZE = 16

_CANDIDATES_PER_DRAW = 32


@dataclass(frozen=True)
class ShapeObject:
    """One solid object: ``cx, cy`` is the centre of its bounding box and ``size`` the box's side,
    both in pixels (x to the right, y down; pixel ``i`` covers ``[i, i + 1)``). The renderer snaps
    the box to whole pixels; sampled objects already are."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"ShapeObject.shape must be one of {SHAPES}, got {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"ShapeObject.color must be one of {COLORS}, got {self.color!r}")
        if not self.size >= 1:
            raise ValueError(f"ShapeObject.size must be >= 1 pixel, got {self.size!r}")

    @property
    def box(self) -> tuple[int, int, int]:
        """``(x0, y0, side)`` of the whole-pixel box the renderer draws the object in."""
        side = max(1, int(round(self.size)))
        return int(round(self.cx - side / 2)), int(round(self.cy - side / 2)), side

    @property
    def centroid(self) -> tuple[float, float]:
        """Area centroid ``(x, y)`` of the rendered object (a triangle's lies below its box centre)."""
        x0, y0, side = self.box
        dx, dy = template_centroid(self.shape, side)
        return x0 + dx, y0 + dy


@dataclass(frozen=True)
class Scene:
    """The objects drawn on a ``size`` x ``size`` canvas (later objects are drawn over earlier ones)."""

    objects: tuple[ShapeObject, ...]
    size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        _check_canvas_size(self.size, "Scene.size")
        for obj in self.objects:
            if not isinstance(obj, ShapeObject):
                raise TypeError(f"Scene.objects must hold ShapeObject instances, got {type(obj).__name__}")


def _check_canvas_size(size: object, name: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_CANVAS_SIZE:
        raise ValueError(f"{name} must be an int >= {MIN_CANVAS_SIZE}, got {size!r}")


def _corner_range(side: str | None, axis: str, lo: int, hi: int, centroid: float, canvas: int) -> tuple[int, int]:
    """Restrict the box-corner range ``[lo, hi]`` on ``axis`` so the centroid lies in ``side``'s half."""
    half, clearance = canvas / 2, SIDE_CLEARANCE * canvas
    if (axis, side) in (("x", "left"), ("y", "top")):
        hi = min(hi, int(np.floor(half - clearance - centroid)))
    elif (axis, side) in (("x", "right"), ("y", "bottom")):
        lo = max(lo, int(np.ceil(half + clearance - centroid)))
    return lo, hi


def sample_scene(
    prompt: str | PromptSpec,
    rng: np.random.Generator,
    size: int = 32,
    max_restarts: int = 200,
) -> Scene:
    """A random scene showing exactly what ``prompt`` describes and nothing else.

    Each object gets a random whole-pixel size in :data:`OBJECT_SIZE_RANGE` and a random whole-pixel
    position inside the canvas margin, at least :data:`OBJECT_GAP` from earlier objects and, for
    location prompts, with its centroid :data:`SIDE_CLEARANCE` inside the named half. Objects are
    placed one by one, each from a batch of candidate positions (one random draw per object); if none
    fits, the whole scene is redrawn, at most ``max_restarts`` times, so it never loops forever.
    Deterministic given ``rng``'s state.

    Raises:
        PromptGrammarError: ``prompt`` is not in the grammar.
        RuntimeError: no valid scene was found in ``max_restarts`` tries.
    """
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    _check_canvas_size(size, "size")
    wanted = [(group.color, group.shape, group.side) for group in spec.groups for _ in range(group.count)]
    margin, gap = round(CANVAS_MARGIN * size), round(OBJECT_GAP * size)
    side_lo, side_hi = round(OBJECT_SIZE_RANGE[0] * size), round(OBJECT_SIZE_RANGE[1] * size)

    for _ in range(max_restarts):
        boxes: list[tuple[int, int, int]] = []
        for color, shape, side in wanted:
            box_side = int(rng.integers(side_lo, side_hi + 1))
            centroid_x, centroid_y = template_centroid(shape, box_side)
            x_lo, x_hi = _corner_range(side, "x", margin, size - margin - box_side, centroid_x, size)
            y_lo, y_hi = _corner_range(side, "y", margin, size - margin - box_side, centroid_y, size)
            if x_lo > x_hi or y_lo > y_hi:
                break
            corners = rng.integers((x_lo, y_lo), (x_hi + 1, y_hi + 1), size=(_CANDIDATES_PER_DRAW, 2))
            if boxes:
                others = np.array(boxes)
                # Boxes are disjoint with a gap iff they are separated along x or along y.
                apart_x = (corners[:, None, 0] >= others[None, :, 0] + others[None, :, 2] + gap) | (
                    others[None, :, 0] >= corners[:, None, 0] + box_side + gap
                )
                apart_y = (corners[:, None, 1] >= others[None, :, 1] + others[None, :, 2] + gap) | (
                    others[None, :, 1] >= corners[:, None, 1] + box_side + gap
                )
                free = np.flatnonzero((apart_x | apart_y).all(axis=1))
                if free.size == 0:
                    break
                x0, y0 = corners[free[0]]
            else:
                x0, y0 = corners[0]
            boxes.append((int(x0), int(y0), box_side))
        else:
            objects = tuple(
                ShapeObject(shape=shape, color=color, cx=x0 + s / 2, cy=y0 + s / 2, size=float(s))
                for (color, shape, _), (x0, y0, s) in zip(wanted, boxes)
            )
            return Scene(objects=objects, size=size)
    raise RuntimeError(
        f"could not place the objects of {spec.prompt!r} on a {size}x{size} canvas in {max_restarts} tries"
    )
