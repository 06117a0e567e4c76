"""A word-level CLIP tokenizer built locally (no hub), for models trained on a closed vocabulary.

Why not ``CLIPTokenizer.from_pretrained(hub_id)``: no hub is reachable here, and with
``HF_HUB_OFFLINE=1`` and an empty cache some tokenizers silently come back with 2–5 tokens. So the
shapes-world tokenizer is a real :class:`transformers.CLIPTokenizer` (what a stock
``StableDiffusionPipeline`` expects) whose BPE merges are *learned* by the ``tokenizers`` library on
the grammar's words, until every word is exactly one token. It saves with ``save_pretrained`` and
loads back with ``CLIPTokenizer.from_pretrained(folder)`` like any other.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's own normaliser and pre-tokeniser, so our BPE merges are learned on exactly the pieces that
# CLIPTokenizer will split text into.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WORD = re.compile(r"[a-z]+")


class UnknownWordError(ValueError):
    """A prompt uses a word the model's closed vocabulary does not have."""


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 16) -> CLIPTokenizer:
    """A CLIPTokenizer on which each of ``words`` (lowercase letters) is a single token."""
    words = sorted({w.lower() for w in words})
    bad = [w for w in words if not _WORD.fullmatch(w)]
    if bad or not words:
        raise ValueError(f"vocabulary words must be non-empty lowercase ASCII letters, got {bad or words}")
    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # never reached: training stops once every word is one token
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        initial_alphabet=list(string.ascii_lowercase),
        show_progress=False,
    )
    backend.train_from_iterator([" ".join(words)], trainer)
    merges = [tuple(pair) for pair in json.loads(backend.to_str())["model"]["merges"]]
    # The trainer breaks ties between equally frequent pairs differently from run to run, and numbers
    # tokens in that order. Renumber deterministically (special tokens, whole words in sorted order,
    # then the other pieces) so every grammar word gets the same id on every build.
    whole_words = [f"{w}</w>" for w in words]
    rest = sorted(set(backend.get_vocab()) - set(whole_words) - {BOS, EOS})
    vocab = {token: i for i, token in enumerate([BOS, EOS, *whole_words, *rest])}
    # `closed_vocabulary` is saved in tokenizer_config.json, so a loaded model knows which words it has.
    tokenizer = CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=model_max_length, closed_vocabulary=list(words)
    )
    not_single = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if not_single:
        raise RuntimeError(f"BPE training left words split into several tokens: {not_single}")
    return tokenizer


def vocabulary_words(tokenizer: CLIPTokenizer) -> set[str] | None:
    """The whole words of a closed-vocabulary tokenizer built here, or None for an open one (CLIP's)."""
    words = tokenizer.init_kwargs.get("closed_vocabulary")
    return set(words) if words else None


def check_prompt_words(tokenizer: CLIPTokenizer, prompts: Sequence[str], known: set[str] | None = None) -> None:
    """Raise :class:`UnknownWordError` if a prompt has a word outside a closed-vocabulary tokenizer.

    A BPE tokenizer would silently split an unknown word into letters; a model trained on whole words
    has never seen those pieces, so we refuse the prompt instead.
    """
    known = vocabulary_words(tokenizer) if known is None else known
    if known is None:
        return  # an open-vocabulary tokenizer: every word has some tokenisation
    for prompt in prompts:
        words = re.findall(r"[^\s.,;:!?]+", prompt.lower())
        unknown = [w for w in words if w not in known]
        if unknown:
            raise UnknownWordError(
                f"prompt {prompt!r} uses word(s) {unknown} that the model's tokenizer does not know; "
                f"use only: {' '.join(sorted(known))}"
            )
        if len(words) + 2 > tokenizer.model_max_length:
            raise UnknownWordError(
                f"prompt {prompt!r} has {len(words)} words; the tokenizer holds at most "
                f"{tokenizer.model_max_length - 2}"
            )
