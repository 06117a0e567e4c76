"""The shapes world: a tiny text-to-image world whose alignment and quality are judged exactly by code.

Pure library (numpy, Pillow, scipy): a prompt grammar, a scene sampler and renderer, the judge
(alignment reward), the quality score (prompt-free "aesthetic" score) and the skewed caption
distribution of the base model. The design note is docs/shapes_world.md.
"""

from __future__ import annotations

from typing import Any

from dpok.images import to_image_batch  # re-exported: what the world's functions accept as images
from dpok.world.detect import DetectedObject, Detections, detect_batch, detect_objects
from dpok.world.grammar import (
    CATEGORIES,
    COLORS,
    COUNT_WORDS,
    SHAPES,
    SIDES,
    ObjectSpec,
    PromptGrammarError,
    PromptSpec,
    enumerate_prompts,
    format_prompt,
    parse_prompt,
    vocabulary,
)
from dpok.world.judge import judge
from dpok.world.quality import quality, quality_factors
from dpok.world.render import BACKGROUND, PALETTE, render, render_batch
from dpok.world.scene import Scene, ShapeObject, sample_scene
from dpok.world.skew import CaptionSkew, caption_distribution

__all__ = [
    "BACKGROUND",
    "CATEGORIES",
    "COLORS",
    "COUNT_WORDS",
    "PALETTE",
    "SHAPES",
    "SIDES",
    "CaptionSkew",
    "DetectedObject",
    "Detections",
    "ObjectSpec",
    "PromptGrammarError",
    "PromptSpec",
    "Scene",
    "ShapeObject",
    "caption_distribution",
    "detect_batch",
    "detect_objects",
    "enumerate_prompts",
    "format_prompt",
    "judge",
    "make_prompt_sets",
    "parse_prompt",
    "quality",
    "quality_factors",
    "render",
    "render_batch",
    "sample_scene",
    "to_image_batch",
    "vocabulary",
    "write_prompt_sets",
]

_LAZY = {"make_prompt_sets", "write_prompt_sets"}


def __getattr__(name: str) -> Any:
    # prompt_sets is also run as ``python -m dpok.world.prompt_sets``; importing it eagerly here would
    # make runpy warn that the module was already imported before being run as __main__.
    if name in _LAZY:
        from dpok.world import prompt_sets

        return getattr(prompt_sets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
