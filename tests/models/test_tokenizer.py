"""The locally built word-level tokenizer of the shapes world."""

import pytest
from transformers import CLIPTokenizer

from dpok.models import UnknownWordError, build_word_tokenizer, check_prompt_words, vocabulary_words
from dpok.world import enumerate_prompts, vocabulary


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(vocabulary(), model_max_length=16)


def test_every_grammar_word_is_one_token_and_round_trips(tokenizer):
    for word in vocabulary():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
        assert tokenizer.decode(ids) == word
    for prompt in enumerate_prompts():
        ids = tokenizer(prompt).input_ids
        assert len(ids) == len(prompt.split()) + 2
        assert tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_ids_are_the_same_on_every_build(tokenizer):
    again = build_word_tokenizer(vocabulary(), model_max_length=16)
    assert again.get_vocab() == tokenizer.get_vocab()
    prompts = enumerate_prompts()[::7]
    assert again(prompts).input_ids == tokenizer(prompts).input_ids


def test_saves_and_loads_as_a_stock_clip_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tokenizer) > len(vocabulary())
    assert loaded("a green triangle on the left").input_ids == tokenizer("a green triangle on the left").input_ids


def test_unknown_words_are_refused_with_the_vocabulary(tokenizer):
    assert vocabulary_words(tokenizer) == set(vocabulary())
    check_prompt_words(tokenizer, ["A green triangle on the left."])
    with pytest.raises(UnknownWordError, match=r"\['purple'\].*use only: a and at blue"):
        check_prompt_words(tokenizer, ["a purple triangle"])
    with pytest.raises(UnknownWordError, match="at most 14"):
        check_prompt_words(tokenizer, ["a red circle and a blue square and a green triangle and a red square"])


def test_bad_vocabulary():
    with pytest.raises(ValueError, match="lowercase"):
        build_word_tokenizer(["Red", "x1"])
