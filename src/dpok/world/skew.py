"""The skewed caption distribution the base model is pretrained on.

The paper fine-tunes Stable Diffusion on prompts it renders poorly ("a green colored rabbit"):
there is room for RL to improve, and pretrained knowledge for the KL regulariser to protect. In the
shapes world that gap is made on purpose: the pretrain pipeline samples its captions from
:func:`caption_distribution`, in which

- a few *rare features* (colour-shape pairs, counts, sides) have their weight multiplied by
  ``rare_factor`` once per occurrence in a prompt, so the base model sees e.g. green triangles
  rarely and is poor at them;
- a few *unseen prompts*, made only of common features, are never shown, so evaluating them
  measures compositional generalisation;
- categories get the mass ``category_weights`` gives them, however many (rare) prompts each has.

``CaptionSkew`` is plain data (``to_dict``/``from_dict``) so it can live in a Kedro parameters file.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from dpok.world.grammar import (
    CATEGORIES,
    COLORS,
    COUNT_WORDS,
    SHAPES,
    SIDES,
    PromptGrammarError,
    PromptSpec,
    enumerate_prompts,
    parse_prompt,
)

DEFAULT_UNSEEN_PROMPTS: tuple[str, ...] = (
    "a blue triangle",
    "three yellow squares",
    "two green circles",
    "a blue circle and a green square",
    "a red triangle on the right",
    "a red square at the top",
)


def _default_category_weights() -> Mapping[str, float]:
    return {category: 1.0 for category in CATEGORIES}


@dataclass(frozen=True)
class CaptionSkew:
    """Which captions the base model sees rarely or never during pretraining.

    Attributes:
        rare_pairs: (colour, shape) pairs that are rare wherever they appear.
        rare_counts: object counts (2-4, or 1 for single objects) that are rare.
        rare_sides: sides of location prompts that are rare.
        rare_factor: weight multiplier per rare feature of a prompt, in (0, 1]; 1 switches the skew off.
        category_weights: relative caption mass of each category (all four keys, >= 0, not all 0).
        unseen_prompts: prompts never used as captions (stored in canonical form).
    """

    rare_pairs: tuple[tuple[str, str], ...] = (("green", "triangle"), ("yellow", "circle"))
    rare_counts: tuple[int, ...] = (4,)
    rare_sides: tuple[str, ...] = ("bottom",)
    rare_factor: float = 0.002
    category_weights: Mapping[str, float] = field(default_factory=_default_category_weights)
    unseen_prompts: tuple[str, ...] = DEFAULT_UNSEEN_PROMPTS

    def __post_init__(self) -> None:
        pairs = tuple(tuple(pair) for pair in self.rare_pairs)
        for pair in pairs:
            if len(pair) != 2 or pair[0] not in COLORS or pair[1] not in SHAPES:
                raise ValueError(
                    f"CaptionSkew.rare_pairs: {list(pair)!r} is not a [colour, shape] pair; "
                    f"colours: {COLORS}, shapes: {SHAPES}"
                )
        counts = tuple(self.rare_counts)
        valid_counts = sorted(set(COUNT_WORDS.values()))
        for count in counts:
            if isinstance(count, bool) or count not in valid_counts:
                raise ValueError(f"CaptionSkew.rare_counts: {count!r} is not a count of the grammar {valid_counts}")
        sides = tuple(self.rare_sides)
        for side in sides:
            if side not in SIDES:
                raise ValueError(f"CaptionSkew.rare_sides: unknown side {side!r}; expected one of {SIDES}")
        if isinstance(self.rare_factor, bool) or not isinstance(self.rare_factor, (int, float)) or not (
            0 < self.rare_factor <= 1
        ):
            raise ValueError(f"CaptionSkew.rare_factor must be a number in (0, 1], got {self.rare_factor!r}")
        weights = dict(self.category_weights)
        if set(weights) != set(CATEGORIES):
            raise ValueError(
                f"CaptionSkew.category_weights needs exactly the keys {CATEGORIES}, got {sorted(weights)}"
            )
        for category, weight in weights.items():
            is_number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
            if not is_number or not math.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"CaptionSkew.category_weights[{category!r}] must be a finite number >= 0, got {weight!r}"
                )
        if not any(weight > 0 for weight in weights.values()):
            raise ValueError("CaptionSkew.category_weights: at least one category needs a positive weight")
        unseen: list[str] = []
        for prompt in self.unseen_prompts:
            try:
                canonical = parse_prompt(prompt).prompt
            except (PromptGrammarError, TypeError) as error:
                raise ValueError(f"CaptionSkew.unseen_prompts: {error}") from error
            if canonical in unseen:
                raise ValueError(f"CaptionSkew.unseen_prompts lists {canonical!r} twice")
            unseen.append(canonical)
        object.__setattr__(self, "rare_pairs", pairs)
        object.__setattr__(self, "rare_counts", counts)
        object.__setattr__(self, "rare_sides", sides)
        object.__setattr__(self, "rare_factor", float(self.rare_factor))
        # A private copy in canonical order (a plain dict so the object pickles and deep-copies).
        object.__setattr__(self, "category_weights", {c: float(weights[c]) for c in CATEGORIES})
        object.__setattr__(self, "unseen_prompts", tuple(unseen))
        for category, mass in _category_masses(self).items():
            if mass == 0 and self.category_weights[category] > 0:
                raise ValueError(
                    f"CaptionSkew: every {category!r} prompt is unseen, but its category weight is positive"
                )

    def __hash__(self) -> int:
        # Hashes the current contents, so the per-skew cache below never serves stale masses.
        return hash(
            (
                self.rare_pairs,
                self.rare_counts,
                self.rare_sides,
                self.rare_factor,
                tuple(self.category_weights.items()),
                self.unseen_prompts,
            )
        )

    def rare_features(self, prompt: str | PromptSpec) -> int:
        """How many rare features the prompt has (one per rare pair, count or side of each group)."""
        spec = _as_spec(prompt)
        return sum(
            ((group.color, group.shape) in self.rare_pairs)
            + (group.count in self.rare_counts)
            + (group.side in self.rare_sides)
            for group in spec.groups
        )

    def rarity(self, prompt: str | PromptSpec) -> str:
        """``"unseen"`` if never a caption, ``"rare"`` if it has a rare feature, else ``"common"``."""
        spec = _as_spec(prompt)
        if spec.prompt in self.unseen_prompts:
            return "unseen"
        return "rare" if self.rare_features(spec) else "common"

    def relative_weight(self, prompt: str | PromptSpec) -> float:
        """``rare_factor ** rare_features`` (0 if unseen): the weight within the prompt's category."""
        spec = _as_spec(prompt)
        if spec.prompt in self.unseen_prompts:
            return 0.0
        return self.rare_factor ** self.rare_features(spec)

    def weight(self, prompt: str | PromptSpec) -> float:
        """Probability that a pretraining caption is this prompt.

        ``category_weight / sum(category_weights) * relative_weight / (sum of relative weights in the
        category)``: normalising by the category's total relative weight (rather than its prompt
        count) gives each category exactly its share however many rare prompts it has, so the
        weights of all prompts sum to 1.
        """
        spec = _as_spec(prompt)
        mass = _category_masses(self)[spec.category]
        if mass == 0:
            return 0.0
        total = sum(self.category_weights.values())
        return self.category_weights[spec.category] / total * self.relative_weight(spec) / mass

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), for a parameters YAML."""
        return {
            "rare_pairs": [list(pair) for pair in self.rare_pairs],
            "rare_counts": list(self.rare_counts),
            "rare_sides": list(self.rare_sides),
            "rare_factor": self.rare_factor,
            "category_weights": dict(self.category_weights),
            "unseen_prompts": list(self.unseen_prompts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptionSkew:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise TypeError(f"CaptionSkew.from_dict expects a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CaptionSkew.from_dict: unknown key(s) {unknown}; expected some of {sorted(known)}")
        kwargs = dict(data)
        for key in ("rare_pairs", "rare_counts", "rare_sides", "unseen_prompts"):
            if key in kwargs:
                value = kwargs[key]
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise ValueError(f"CaptionSkew.from_dict: {key} must be a list, got {value!r}")
                kwargs[key] = tuple(tuple(item) if key == "rare_pairs" else item for item in value)
        return cls(**kwargs)


def _as_spec(prompt: str | PromptSpec) -> PromptSpec:
    return prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)


@functools.lru_cache(maxsize=64)
def _category_masses(skew: CaptionSkew) -> dict[str, float]:
    return {
        category: sum(skew.relative_weight(prompt) for prompt in enumerate_prompts(category))
        for category in CATEGORIES
    }


def caption_distribution(skew: CaptionSkew | None = None) -> tuple[list[str], np.ndarray]:
    """All prompts of the grammar and their pretraining caption probabilities (sum 1, 0 for unseen)."""
    skew = CaptionSkew() if skew is None else skew
    prompts = enumerate_prompts()
    probs = np.array([skew.weight(prompt) for prompt in prompts], dtype=np.float64)
    return prompts, probs / probs.sum()
