"""The judge: near 1 on ground truth, at most 0.5 on a one-attribute mismatch, graded in between."""

from __future__ import annotations

import dataclasses
import importlib
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dpok.world import (
    CATEGORIES,
    COLORS,
    SHAPES,
    PromptGrammarError,
    PromptSpec,
    Scene,
    ShapeObject,
    detect_objects,
    format_prompt,
    judge,
    parse_prompt,
    render,
    sample_scene,
)
from dpok.world.detect import detect_batch

from .conftest import CleanSet, make_clean_set

# The package exports the function judge under the submodule's name; get the module itself.
judge_module = importlib.import_module("dpok.world.judge")

OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
CHANGE_KINDS = {  # which categories each kind of one-attribute change applies to
    "color": CATEGORIES,
    "shape": CATEGORIES,
    "count": ("count",),
    "side": ("location",),
}


def change_one_attribute(prompt: str, kind: str, rng: np.random.Generator) -> str | None:
    """The prompt with one attribute of one group changed, or None if that leaves the grammar."""
    spec = parse_prompt(prompt)
    index = int(rng.integers(len(spec.groups)))
    group = spec.groups[index]
    if kind == "color":
        group = dataclasses.replace(group, color=str(rng.choice([c for c in COLORS if c != group.color])))
    elif kind == "shape":
        group = dataclasses.replace(group, shape=str(rng.choice([s for s in SHAPES if s != group.shape])))
    elif kind == "count":
        group = dataclasses.replace(group, count=int(rng.choice([n for n in (2, 3, 4) if n != group.count])))
    else:
        group = dataclasses.replace(group, side=OPPOSITE[group.side])  # type: ignore[index]
    groups = list(spec.groups)
    groups[index] = group
    try:
        return format_prompt(PromptSpec("", spec.category, tuple(groups)))
    except ValueError:  # a composition whose two objects became identical
        return None


def scene_of(*objects: tuple[str, str, float, float, float]) -> np.ndarray:
    """Render hand-placed objects ``(shape, color, cx, cy, size)`` as a batch of one."""
    return render(Scene(tuple(ShapeObject(*obj) for obj in objects)))[None]


@pytest.mark.parametrize("category", CATEGORIES)
def test_ground_truth_renders_score_near_one(clean_sets: dict[str, CleanSet], category: str) -> None:
    clean = clean_sets[category]
    scores = judge(clean.images, clean.prompts)
    assert scores.dtype == np.float64 and scores.shape == (len(clean.prompts),)
    assert scores.mean() >= 0.98
    assert np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("kind", sorted(CHANGE_KINDS))
def test_one_attribute_mismatch_scores_at_most_half(clean_sets: dict[str, CleanSet], kind: str) -> None:
    rng = np.random.default_rng(11)
    images, wrong_prompts = [], []
    for category in CHANGE_KINDS[kind]:
        clean = clean_sets[category]
        for image, prompt in zip(clean.images, clean.prompts):
            changed = change_one_attribute(prompt, kind, rng)
            if changed is not None:
                images.append(image)
                wrong_prompts.append(changed)
    assert len(images) >= 500
    scores = judge(np.stack(images), wrong_prompts)
    assert scores.mean() <= 0.5
    # Exactly one fact is wrong (count changes may be off by two): partial credit, not zero.
    assert scores.max() <= math.exp(-1) + 1e-9
    assert scores.min() >= (math.exp(-2) if kind == "count" else math.exp(-1)) - 1e-9


def test_each_attribute_is_read_correctly(clean_sets: dict[str, CleanSet]) -> None:
    hits = {"color": 0, "shape": 0, "count": 0, "side": 0}
    totals = dict.fromkeys(hits, 0)
    for category, clean in clean_sets.items():
        detections = detect_batch(clean.images)
        for index, (prompt, scene) in enumerate(zip(clean.prompts, clean.scenes)):
            found = detections.objects(index)
            totals["count"] += 1
            hits["count"] += len(found) == len(scene.objects)
            for obj in scene.objects:
                x, y = obj.centroid
                nearest = min(found, key=lambda d: (d.cx - x) ** 2 + (d.cy - y) ** 2)
                totals["color"] += 1
                hits["color"] += nearest.color == obj.color
                totals["shape"] += 1
                hits["shape"] += nearest.shape == obj.shape
                if category == "location":
                    side = parse_prompt(prompt).groups[0].side
                    totals["side"] += 1
                    hits["side"] += {"left": nearest.cx < 16, "right": nearest.cx > 16,
                                     "top": nearest.cy < 16, "bottom": nearest.cy > 16}[side]
    accuracy = {key: hits[key] / totals[key] for key in hits}
    assert min(totals.values()) >= 500
    assert all(value >= 0.99 for value in accuracy.values()), accuracy


def test_slight_blur_does_not_change_what_is_read(clean_sets: dict[str, CleanSet]) -> None:
    # Mixed edge pixels are cut at half-way, so a blurred object keeps its size and shape.
    for clean in clean_sets.values():
        images = clean.images[:100].astype(np.float64)
        blurred = ndimage.gaussian_filter(images, sigma=(0, 0.5, 0.5, 0)).round().astype(np.uint8)
        assert judge(blurred, clean.prompts[:100]).mean() >= 0.98


def test_detected_centroids_match_the_scene() -> None:
    scene = sample_scene("a red circle and a blue triangle", np.random.default_rng(5))
    found = sorted(detect_objects(render(scene)), key=lambda d: d.color)
    truth = sorted(scene.objects, key=lambda o: o.color)
    assert len(found) == len(truth) == 2
    for detected, obj in zip(found, truth):
        assert (detected.color, detected.shape) == (obj.color, obj.shape)
        assert detected.cx == pytest.approx(obj.centroid[0]) and detected.cy == pytest.approx(obj.centroid[1])


def test_count_errors_get_graded_partial_credit() -> None:
    positions = [(8, 8), (24, 8), (8, 24), (24, 24)]
    scores = [
        judge(scene_of(*[("square", "red", x, y, 8) for x, y in positions[:found]]), ["four red squares"])[0]
        for found in range(1, 5)
    ]
    assert scores == pytest.approx([math.exp(-3), math.exp(-2), math.exp(-1), 1.0])
    # Too many is penalised like too few.
    four = scene_of(*[("square", "red", x, y, 8) for x, y in positions])
    assert judge(four, ["three red squares"])[0] == pytest.approx(math.exp(-1))


def test_composition_is_a_conjunction_and_order_free() -> None:
    image = scene_of(("circle", "red", 8, 16, 8), ("square", "yellow", 24, 16, 8))
    assert judge(image, ["a red circle and a yellow square"])[0] == pytest.approx(1.0)
    assert judge(image, ["a yellow square and a red circle"])[0] == pytest.approx(1.0)
    # Half right is not half the score: one wrong colour costs a factor e, like for one object.
    assert judge(image, ["a red circle and a green square"])[0] == pytest.approx(math.exp(-1))
    # Swapped bindings are two wrong facts.
    assert judge(image, ["a yellow circle and a red square"])[0] == pytest.approx(math.exp(-2))


def test_extra_objects_and_shapeless_blobs_are_penalised() -> None:
    extra = scene_of(("circle", "red", 8, 16, 8), ("square", "blue", 24, 16, 8))
    assert judge(extra, ["a red circle"])[0] == pytest.approx(math.exp(-1))
    bar = np.full((1, 32, 32, 3), 240, dtype=np.uint8)
    bar[:] = scene_of()[0]
    bar[0, 14:17, 4:28] = (220, 40, 40)  # a red bar: red, but no known shape
    assert detect_objects(bar[0])[0].shape is None
    assert judge(bar, ["a red square"])[0] == pytest.approx(math.exp(-1))


def test_side_credit_is_graded_near_the_midline() -> None:
    prompt = ["a blue square on the left"]
    far_left = judge(scene_of(("square", "blue", 8, 16, 8)), prompt)[0]
    on_midline = judge(scene_of(("square", "blue", 16, 16, 8)), prompt)[0]
    far_right = judge(scene_of(("square", "blue", 24, 16, 8)), prompt)[0]
    assert (far_left, on_midline, far_right) == pytest.approx((1.0, math.exp(-0.5), math.exp(-1)))


def test_empty_canvas_and_noise_score_low() -> None:
    empty = scene_of()
    assert judge(empty, ["three green triangles"])[0] == pytest.approx(math.exp(-3))
    noise = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    assert judge(noise, ["a red circle"] * 20).max() <= math.exp(-1) + 1e-9


def test_accepts_pil_images_and_lists_of_arrays(clean_sets: dict[str, CleanSet]) -> None:
    clean = clean_sets["composition"]
    images, prompts = clean.images[:8], clean.prompts[:8]
    expected = judge(images, prompts)
    assert np.array_equal(judge([Image.fromarray(i) for i in images], prompts), expected)
    assert np.array_equal(judge(list(images), prompts), expected)
    assert judge(images[:0], []).shape == (0,)


def test_larger_canvas() -> None:
    prompts = ["four blue triangles", "a red circle and a yellow square", "a green square at the top"]
    clean = make_clean_set(prompts, 60, seed=4, size=64)
    assert judge(clean.images, clean.prompts).mean() >= 0.98


def test_parses_each_distinct_prompt_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting_parse(prompt: str) -> PromptSpec:
        calls.append(prompt)
        return parse_prompt(prompt)

    monkeypatch.setattr(judge_module, "parse_prompt", counting_parse)
    images = np.stack([render(sample_scene("a red circle", np.random.default_rng(i))) for i in range(6)])
    judge(images, ["a red circle", "two blue squares"] * 3)
    assert sorted(calls) == ["a red circle", "two blue squares"]


def test_bad_inputs_raise_clear_errors() -> None:
    image = scene_of(("circle", "red", 16, 16, 8))
    with pytest.raises(TypeError, match=r"uint8.*float64"):
        judge(image.astype(np.float64) / 255, ["a red circle"])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\).*image\[None\]"):
        judge(image[0], ["a red circle"])
    with pytest.raises(ValueError, match="3 RGB channels"):
        judge(np.concatenate([image, image[..., :1]], axis=-1), ["a red circle"])
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        judge(image, ["a red circle", "a red circle"])
    with pytest.raises(TypeError, match="single str"):
        judge(image, "a red circle")  # type: ignore[arg-type]
    with pytest.raises(PromptGrammarError, match=r"prompts\[0\].*'purple'"):
        judge(image, ["a purple circle"])
    with pytest.raises(ValueError, match="mode 'L'"):
        judge([Image.new("L", (32, 32))], ["a red circle"])
    with pytest.raises(ValueError, match="one size"):
        judge([image[0], np.zeros((16, 16, 3), np.uint8)], ["a red circle"] * 2)
