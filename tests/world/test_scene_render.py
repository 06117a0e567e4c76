"""Scene sampling and rendering: every prompt has valid, exact ground-truth images."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dpok.world import (
    BACKGROUND,
    PALETTE,
    SHAPES,
    PromptGrammarError,
    Scene,
    ShapeObject,
    enumerate_prompts,
    parse_prompt,
    render,
    render_batch,
    sample_scene,
)
from dpok.world import scene as scene_module
from dpok.world.detect import SHAPE_FEATURE_SCALES, SHAPE_PROTOTYPES
from dpok.world.templates import shape_template

from .conftest import CleanSet

ALLOWED_COLOURS = {tuple(rgb) for rgb in PALETTE.values()} | {tuple(BACKGROUND)}


def test_every_prompt_can_be_sampled_and_rendered() -> None:
    rng = np.random.default_rng(0)
    for prompt in enumerate_prompts():
        spec = parse_prompt(prompt)
        scene = sample_scene(prompt, rng)
        wanted = Counter((g.color, g.shape) for g in spec.groups for _ in range(g.count))
        assert Counter((o.color, o.shape) for o in scene.objects) == wanted, prompt
        image = render(scene)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert {tuple(p) for p in image.reshape(-1, 3)} <= ALLOWED_COLOURS


def test_sampling_is_deterministic_for_a_seed() -> None:
    prompts = ["four red squares", "a red circle and a blue square", "a green triangle at the top"]
    first = [sample_scene(p, np.random.default_rng(7)) for p in prompts]
    again = [sample_scene(p, np.random.default_rng(7)) for p in prompts]
    other = [sample_scene(p, np.random.default_rng(8)) for p in prompts]
    assert first == again
    assert first != other


def _assert_geometry(scene: Scene) -> None:
    size = scene.size
    margin, gap = round(2 / 32 * size), round(3 / 32 * size)
    boxes = [obj.box for obj in scene.objects]
    for x0, y0, side in boxes:
        assert round(7 / 32 * size) <= side <= round(10 / 32 * size)
        assert margin <= x0 and x0 + side <= size - margin
        assert margin <= y0 and y0 + side <= size - margin
    for i, (xa, ya, sa) in enumerate(boxes):
        for xb, yb, sb in boxes[i + 1 :]:
            apart_x = xb >= xa + sa + gap or xa >= xb + sb + gap
            apart_y = yb >= ya + sa + gap or ya >= yb + sb + gap
            assert apart_x or apart_y, scene


def _pixels_apart(scene: Scene) -> int:
    """Smallest Chebyshev distance between pixels of two different objects (rendered one by one)."""
    masks = [np.argwhere((render(Scene((obj,), scene.size)) != BACKGROUND).any(-1)) for obj in scene.objects]
    best = scene.size
    for i, a in enumerate(masks):
        for b in masks[i + 1 :]:
            best = min(best, int(np.abs(a[:, None, :] - b[None, :, :]).max(-1).min()))
    return best


def test_objects_are_inside_the_canvas_and_apart(clean_sets: dict[str, CleanSet]) -> None:
    for category in ("count", "composition"):
        for scene in clean_sets[category].scenes:
            _assert_geometry(scene)
    # Independent of the box arithmetic: at least two background pixels between any two objects.
    crowded = [s for s in clean_sets["count"].scenes if len(s.objects) == 4][:60]
    assert min(_pixels_apart(scene) for scene in crowded) >= 3


def test_location_centroids_are_clearly_inside_the_named_half(clean_sets: dict[str, CleanSet]) -> None:
    clean = clean_sets["location"]
    for prompt, scene in zip(clean.prompts, clean.scenes):
        side = parse_prompt(prompt).groups[0].side
        x, y = scene.objects[0].centroid
        depth = {"left": 16 - x, "right": x - 16, "top": 16 - y, "bottom": y - 16}[side]
        assert depth >= 3.2 - 1e-9, (prompt, scene)


def test_render_paints_exact_templates(clean_sets: dict[str, CleanSet]) -> None:
    clean = clean_sets["composition"]
    for scene, image in zip(clean.scenes[:100], clean.images[:100]):
        for obj in scene.objects:
            x0, y0, side = obj.box
            patch = (image[y0 : y0 + side, x0 : x0 + side] == PALETTE[obj.color]).all(-1)
            assert np.array_equal(patch, shape_template(obj.shape, side))


def test_templates_are_far_apart_in_shape_feature_space() -> None:
    for side in range(7, 21):
        fills = {shape: shape_template(shape, side).mean() for shape in SHAPES}
        assert fills["square"] == 1.0
        assert 0.74 < fills["circle"] < 0.82
        assert 0.45 < fills["triangle"] < 0.6
        for index, shape in enumerate(SHAPES):
            ys, xs = np.nonzero(shape_template(shape, side))
            height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            assert width == side  # every mask spans its box
            fill, v = len(ys) / (height * width), (ys.mean() + 0.5 - ys.min()) / height
            features = np.array([fill, v, np.log(width / height)])
            distances = np.sqrt((((features - SHAPE_PROTOTYPES) / SHAPE_FEATURE_SCALES) ** 2).sum(axis=1))
            assert distances.argmin() == index and distances[index] < 1.5
            assert np.delete(distances, index).min() > 2.0


def test_larger_canvases_scale_the_geometry() -> None:
    rng = np.random.default_rng(3)
    for prompt in ["four blue triangles", "a yellow circle at the bottom", "a red circle and a green square"]:
        scene = sample_scene(prompt, rng, size=64)
        _assert_geometry(scene)
        assert render(scene).shape == (64, 64, 3)


def test_sampler_gives_up_instead_of_looping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scene_module, "OBJECT_GAP", 0.5)  # no two objects can ever fit
    with pytest.raises(RuntimeError, match="could not place"):
        sample_scene("two red circles", np.random.default_rng(0), max_restarts=5)


def test_sampler_and_scene_validation() -> None:
    with pytest.raises(PromptGrammarError):
        sample_scene("a purple circle", np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        sample_scene("a red circle", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        sample_scene("a red circle", np.random.default_rng(0), size=8)
    with pytest.raises(ValueError, match="shape"):
        ShapeObject("hexagon", "red", 5, 5, 8)
    with pytest.raises(ValueError, match="color"):
        ShapeObject("circle", "purple", 5, 5, 8)
    with pytest.raises(TypeError, match="ShapeObject"):
        Scene(("a red circle",))  # type: ignore[arg-type]


def test_render_clips_hand_made_objects_at_the_border() -> None:
    scene = Scene((ShapeObject("square", "red", cx=1.0, cy=30.0, size=8.0),), size=32)
    image = render(scene)
    assert (image == PALETTE["red"]).all(-1).sum() == 5 * 6  # the visible 5 x 6 corner of the box


def test_render_batch() -> None:
    rng = np.random.default_rng(0)
    scenes = [sample_scene("a red circle", rng) for _ in range(3)]
    batch = render_batch(scenes)
    assert batch.shape == (3, 32, 32, 3)
    assert np.array_equal(batch[1], render(scenes[1]))
    with pytest.raises(ValueError, match="one canvas size"):
        render_batch([scenes[0], sample_scene("a red circle", rng, size=64)])
