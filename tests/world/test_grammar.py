"""The prompt grammar: round trips, canonical text and errors that say what is wrong."""

from __future__ import annotations

import pytest

from dpok.world import (
    CATEGORIES,
    COLORS,
    COUNT_WORDS,
    SHAPES,
    ObjectSpec,
    PromptGrammarError,
    PromptSpec,
    enumerate_prompts,
    format_prompt,
    parse_prompt,
    vocabulary,
)


def test_enumerate_prompts_sizes_and_uniqueness() -> None:
    sizes = {category: len(enumerate_prompts(category)) for category in CATEGORIES}
    pairs = len(COLORS) * len(SHAPES)
    assert sizes == {"color": pairs, "count": 3 * pairs, "composition": pairs * (pairs - 1), "location": 4 * pairs}
    everything = enumerate_prompts()
    assert len(everything) == sum(sizes.values()) == 228
    assert len(set(everything)) == len(everything)


@pytest.mark.parametrize("category", CATEGORIES)
def test_parse_format_round_trip(category: str) -> None:
    for prompt in enumerate_prompts(category):
        spec = parse_prompt(prompt)
        assert spec.prompt == prompt
        assert spec.category == category
        assert format_prompt(spec) == prompt
        assert parse_prompt(format_prompt(spec)) == spec


def test_parse_gives_the_expected_groups() -> None:
    expected = PromptSpec("a green triangle", "color", (ObjectSpec("green", "triangle"),))
    assert parse_prompt("a green triangle") == expected
    assert parse_prompt("three blue circles").groups == (ObjectSpec("blue", "circle", 3),)
    assert parse_prompt("a red circle and a yellow square").groups == (
        ObjectSpec("red", "circle"),
        ObjectSpec("yellow", "square"),
    )
    assert parse_prompt("a blue square at the bottom").groups == (ObjectSpec("blue", "square", 1, "bottom"),)
    assert parse_prompt("four red squares").num_objects == 4


def test_parse_normalises_case_whitespace_and_one_period() -> None:
    assert parse_prompt("  A   Green\tTRIANGLE . ").prompt == "a green triangle"
    assert parse_prompt("Two Red Squares.").prompt == "two red squares"
    with pytest.raises(PromptGrammarError):
        parse_prompt("a green triangle..")


def test_format_prompt_of_a_hand_built_spec() -> None:
    spec = PromptSpec("ignored", "location", (ObjectSpec("yellow", "circle", 1, "left"),))
    assert format_prompt(spec) == "a yellow circle on the left"


@pytest.mark.parametrize(
    ("prompt", "expected_in_message"),
    [
        ("a purple triangle", "'purple'"),
        ("a green hexagon", "'hexagon'"),
        ("two red circle", "plural shape: 'circles'"),
        ("a red circles", "singular shape: 'circle'"),
        ("a red circle and a red circle", "two red circles"),
        ("a red circle at the left", "'at the left'"),
        ("two red circles on the left", "single object"),
        ("two red circles and a blue square", "singular"),
        ("red circle", "do not match"),
        ("", "do not match"),
        ("circle a red", "expected 'a', 'two', 'three' or 'four'"),
    ],
)
def test_bad_prompts_raise_with_a_clear_message(prompt: str, expected_in_message: str) -> None:
    with pytest.raises(PromptGrammarError) as error:
        parse_prompt(prompt)
    message = str(error.value)
    assert expected_in_message in message
    assert repr(prompt) in message  # quotes the prompt
    assert "The grammar accepts" in message  # says what is accepted
    assert isinstance(error.value, ValueError)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_prompt(3)  # type: ignore[arg-type]


def test_vocabulary_is_every_word_of_the_grammar() -> None:
    words = {word for prompt in enumerate_prompts() for word in prompt.split()}
    assert vocabulary() == sorted(words)
    assert set(COUNT_WORDS) <= words and set(COLORS) <= words and {"and", "left", "bottom"} <= words


def test_specs_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="color"):
        ObjectSpec("purple", "circle")
    with pytest.raises(ValueError, match="count"):
        ObjectSpec("red", "circle", 5)
    with pytest.raises(ValueError, match="side"):
        ObjectSpec("red", "circle", 1, "middle")
    with pytest.raises(ValueError, match="composition"):
        PromptSpec("x", "composition", (ObjectSpec("red", "circle"),))
    with pytest.raises(ValueError, match="two different"):
        PromptSpec("x", "composition", (ObjectSpec("red", "circle"), ObjectSpec("red", "circle")))
    with pytest.raises(ValueError, match="category"):
        PromptSpec("x", "style", (ObjectSpec("red", "circle"),))
    with pytest.raises(ValueError, match="unknown prompt category"):
        enumerate_prompts("style")
