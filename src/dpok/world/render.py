"""Rasterise scenes to RGB images.

Flat :data:`BACKGROUND`, solid shapes in exact :data:`PALETTE` colours and no anti-aliasing, so every
pixel of a clean render is exactly one of five colours and the judge reads it back without
ambiguity. Each object is its canonical mask (:func:`dpok.world.templates.shape_template`) pasted at
its whole-pixel box, clipped to the canvas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpok.world.grammar import COLORS
from dpok.world.scene import Scene
from dpok.world.templates import shape_template

# Saturated and far apart in RGB (>= 161 between any two palette colours, >= 209 from the
# background), so colour classification survives the noise a small diffusion model leaves.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 200, 30),
}
BACKGROUND: tuple[int, int, int] = (240, 240, 235)

if tuple(PALETTE) != COLORS:  # pragma: no cover - guards an edit that reorders one list only
    raise AssertionError("PALETTE must list the colours in COLORS order")


def render(scene: Scene) -> np.ndarray:
    """The scene as a ``(size, size, 3)`` uint8 image."""
    if not isinstance(scene, Scene):
        raise TypeError(f"render expects a Scene, got {type(scene).__name__}")
    n = scene.size
    image = np.empty((n, n, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in scene.objects:
        x0, y0, side = obj.box
        mask = shape_template(obj.shape, side)
        # Clip the box to the canvas; the mask is cut the same way.
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + side, n), min(y0 + side, n)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        visible = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        image[cy0:cy1, cx0:cx1][visible] = PALETTE[obj.color]
    return image


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """Render scenes of one canvas size to an ``(N, size, size, 3)`` uint8 array."""
    scenes = list(scenes)
    sizes = {scene.size for scene in scenes}
    if len(sizes) > 1:
        raise ValueError(f"render_batch needs scenes of one canvas size, got sizes {sorted(sizes)}")
    if not scenes:
        raise ValueError("render_batch needs at least one scene (the canvas size comes from them)")
    return np.stack([render(scene) for scene in scenes])
