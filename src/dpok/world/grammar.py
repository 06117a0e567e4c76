"""The prompt grammar of the shapes world.

Four prompt templates, one per capability the DPOK paper evaluates:

- ``color``:        ``a <colour> <shape>``                                e.g. "a green triangle"
- ``count``:        ``two|three|four <colour> <shape>s``                  e.g. "three blue circles"
- ``composition``:  ``a <colour> <shape> and a <colour> <shape>``         e.g. "a red circle and a yellow square"
- ``location``:     ``a <colour> <shape> on the left|on the right|at the top|at the bottom``

Parsing is case-insensitive, collapses whitespace and accepts one trailing period; the canonical text
is lowercase with single spaces and no period. The grammar is deliberately closed and small: the
judge must be able to check every prompt exactly, and the text encoder's vocabulary
(:func:`vocabulary`) is built from it.

Composition prompts name two *different* colour-shape pairs (two identical objects are a count
prompt). :func:`enumerate_prompts` lists every *ordered* pair, so "a red circle and a blue square"
and "a blue square and a red circle" are both prompts of the grammar (12 * 11 = 132 composition
prompts, 228 prompts in all); the judge treats them the same, the text encoder sees both orders.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")
COUNT_WORDS: dict[str, int] = {"a": 1, "two": 2, "three": 3, "four": 4}
CATEGORIES: tuple[str, ...] = ("color", "count", "composition", "location")

SIDE_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
_PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES}
_SINGULARS: dict[str, str] = {plural: shape for shape, plural in _PLURALS.items()}
_COUNT_TO_WORD: dict[int, str] = {count: word for word, count in COUNT_WORDS.items()}
_PHRASE_TO_SIDE: dict[tuple[str, ...], str] = {
    tuple(phrase.split()): side for side, phrase in SIDE_PHRASES.items()
}

GRAMMAR_SUMMARY = (
    "The grammar accepts exactly four forms: 'a <colour> <shape>' (e.g. 'a green triangle'); "
    "'two|three|four <colour> <shape>s' (e.g. 'three blue circles'); "
    "'a <colour> <shape> and a <colour> <shape>' with two different colour-shape pairs "
    "(e.g. 'a red circle and a yellow square'); "
    "'a <colour> <shape> on the left|on the right|at the top|at the bottom' "
    "(e.g. 'a blue square on the left'). "
    f"Colours: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}."
)


class PromptGrammarError(ValueError):
    """A prompt is not a sentence of the shapes-world grammar."""


@dataclass(frozen=True)
class ObjectSpec:
    """One group of identical objects a prompt asks for.

    ``count`` objects of ``color`` and ``shape``; ``side`` is the half of the canvas the object's
    centroid must lie in (location prompts only, which always have ``count == 1``).
    """

    color: str
    shape: str
    count: int = 1
    side: str | None = None

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"ObjectSpec.color must be one of {COLORS}, got {self.color!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"ObjectSpec.shape must be one of {SHAPES}, got {self.shape!r}")
        if isinstance(self.count, bool) or self.count not in _COUNT_TO_WORD:
            raise ValueError(
                f"ObjectSpec.count must be one of {sorted(_COUNT_TO_WORD)}, got {self.count!r}"
            )
        if self.side is not None and self.side not in SIDES:
            raise ValueError(f"ObjectSpec.side must be None or one of {SIDES}, got {self.side!r}")


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: its canonical text, its category and the object groups it asks for."""

    prompt: str
    category: str
    groups: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(
                f"PromptSpec.category must be one of {CATEGORIES}, got {self.category!r}"
            )
        object.__setattr__(self, "groups", tuple(self.groups))
        _check_groups(self.category, self.groups)

    @property
    def num_objects(self) -> int:
        """How many objects an image of this prompt shows."""
        return sum(group.count for group in self.groups)


def _check_groups(category: str, groups: tuple[ObjectSpec, ...]) -> None:
    """Raise ValueError unless ``groups`` is what ``category`` prompts look like."""
    expected_groups = 2 if category == "composition" else 1
    if len(groups) != expected_groups:
        raise ValueError(
            f"a {category!r} prompt has {expected_groups} object group(s), got {len(groups)}"
        )
    for group in groups:
        if (category == "location") != (group.side is not None):
            raise ValueError(f"only location prompts have a side; got {group} in a {category!r} prompt")
        if (category == "count") != (group.count > 1):
            raise ValueError(
                f"only count prompts ask for more than one object; got {group} in a {category!r} prompt"
            )
    if category == "composition" and (groups[0].color, groups[0].shape) == (
        groups[1].color,
        groups[1].shape,
    ):
        raise ValueError(
            "a composition prompt needs two different colour-shape pairs; "
            f"got {groups[0].color} {groups[0].shape} twice"
        )


def _error(prompt: str, reason: str) -> PromptGrammarError:
    return PromptGrammarError(f"Prompt {prompt!r} is outside the shapes-world grammar: {reason}. {GRAMMAR_SUMMARY}")


def _parse_object(prompt: str, words: list[str]) -> ObjectSpec:
    """Parse ``<count word> <colour> <shape or plural>`` (exactly three words)."""
    determiner, color, noun = words
    if determiner not in COUNT_WORDS:
        raise _error(prompt, f"expected 'a', 'two', 'three' or 'four' before {color!r}, got {determiner!r}")
    if color not in COLORS:
        raise _error(prompt, f"expected a colour after {determiner!r}, got {color!r}")
    count = COUNT_WORDS[determiner]
    if count == 1:
        if noun in _SINGULARS:
            raise _error(prompt, f"'a' takes a singular shape: '{_SINGULARS[noun]}', not {noun!r}")
        if noun not in SHAPES:
            raise _error(prompt, f"expected a shape after {color!r}, got {noun!r}")
        return ObjectSpec(color=color, shape=noun, count=1)
    if noun in SHAPES:
        raise _error(prompt, f"{determiner!r} takes a plural shape: '{_PLURALS[noun]}', not {noun!r}")
    if noun not in _SINGULARS:
        raise _error(prompt, f"expected a plural shape after {color!r}, got {noun!r}")
    return ObjectSpec(color=color, shape=_SINGULARS[noun], count=count)


def normalise_prompt_text(prompt: str) -> str:
    """Lowercase, collapse whitespace and drop one trailing period (the canonical text form)."""
    text = " ".join(prompt.lower().split())
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


@functools.lru_cache(maxsize=4096)
def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a prompt of the grammar into a :class:`PromptSpec`.

    Cached: the RL loop judges the same few prompts over and over.

    Raises:
        TypeError: ``prompt`` is not a string.
        PromptGrammarError: the prompt is not in the grammar; the message quotes it, says what the
            grammar accepts and, when one word is unknown, names that word.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
    words = normalise_prompt_text(prompt).split()
    unknown = [word for word in words if word not in _vocabulary_set()]
    if unknown:
        listed = ", ".join(repr(word) for word in dict.fromkeys(unknown))
        raise _error(prompt, f"unknown word(s) {listed}")
    if len(words) == 3:
        group = _parse_object(prompt, words)
        category = "color" if group.count == 1 else "count"
        groups: tuple[ObjectSpec, ...] = (group,)
    elif len(words) == 6 and tuple(words[3:]) in _PHRASE_TO_SIDE:
        group = _parse_object(prompt, words[:3])
        if group.count != 1:
            raise _error(prompt, "location prompts describe a single object ('a <colour> <shape> ...')")
        category, groups = "location", (ObjectSpec(group.color, group.shape, 1, _PHRASE_TO_SIDE[tuple(words[3:])]),)
    elif len(words) == 6 and words[3] in ("on", "at"):
        raise _error(
            prompt,
            f"unknown location phrase {' '.join(words[3:])!r}; accepted: "
            + ", ".join(repr(phrase) for phrase in SIDE_PHRASES.values()),
        )
    elif len(words) == 7 and words[3] == "and":
        first, second = _parse_object(prompt, words[:3]), _parse_object(prompt, words[4:])
        if first.count != 1 or second.count != 1:
            raise _error(prompt, "each object of a composition prompt is singular ('a <colour> <shape>')")
        if (first.color, first.shape) == (second.color, second.shape):
            raise _error(
                prompt,
                "the two objects must differ; for two identical objects say "
                f"'two {first.color} {_PLURALS[first.shape]}'",
            )
        category, groups = "composition", (first, second)
    else:
        raise _error(prompt, f"{len(words)} words do not match any of the four forms")
    return PromptSpec(prompt=_format_groups(category, groups), category=category, groups=groups)


def _format_groups(category: str, groups: tuple[ObjectSpec, ...]) -> str:
    def phrase(group: ObjectSpec) -> str:
        noun = group.shape if group.count == 1 else _PLURALS[group.shape]
        return f"{_COUNT_TO_WORD[group.count]} {group.color} {noun}"

    if category == "composition":
        return f"{phrase(groups[0])} and {phrase(groups[1])}"
    if category == "location":
        return f"{phrase(groups[0])} {SIDE_PHRASES[groups[0].side]}"  # type: ignore[index]
    return phrase(groups[0])


def format_prompt(spec: PromptSpec) -> str:
    """The canonical text of ``spec`` (the inverse of :func:`parse_prompt`).

    Built from ``spec.category`` and ``spec.groups``, which :class:`PromptSpec` has validated, so a
    hand-built spec formats to a sentence that parses back to the same groups.
    """
    if not isinstance(spec, PromptSpec):
        raise TypeError(f"format_prompt expects a PromptSpec, got {type(spec).__name__}")
    return _format_groups(spec.category, spec.groups)


@functools.cache
def _all_prompts() -> dict[str, tuple[str, ...]]:
    pairs = list(itertools.product(COLORS, SHAPES))
    by_category: dict[str, list[str]] = {category: [] for category in CATEGORIES}
    for color, shape in pairs:
        by_category["color"].append(f"a {color} {shape}")
    for count in (2, 3, 4):
        for color, shape in pairs:
            by_category["count"].append(f"{_COUNT_TO_WORD[count]} {color} {_PLURALS[shape]}")
    for (color_a, shape_a), (color_b, shape_b) in itertools.permutations(pairs, 2):
        by_category["composition"].append(f"a {color_a} {shape_a} and a {color_b} {shape_b}")
    for color, shape in pairs:
        for side in SIDES:
            by_category["location"].append(f"a {color} {shape} {SIDE_PHRASES[side]}")
    return {category: tuple(prompts) for category, prompts in by_category.items()}


def enumerate_prompts(category: str | None = None) -> list[str]:
    """Every prompt of the grammar (canonical text), optionally of one category.

    Order is fixed: categories in :data:`CATEGORIES` order; within one, colours then shapes (count
    prompts: counts first; composition: every ordered pair of distinct colour-shape pairs).
    """
    prompts = _all_prompts()
    if category is None:
        return [prompt for category_prompts in prompts.values() for prompt in category_prompts]
    if category not in prompts:
        raise ValueError(f"unknown prompt category {category!r}; expected one of {CATEGORIES} or None")
    return list(prompts[category])


@functools.cache
def _vocabulary_set() -> frozenset[str]:
    words = set(COUNT_WORDS) | set(COLORS) | set(SHAPES) | set(_SINGULARS) | {"and"}
    for phrase in SIDE_PHRASES.values():
        words.update(phrase.split())
    return frozenset(words)


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted and unique (the tokenizer's word list)."""
    return sorted(_vocabulary_set())
