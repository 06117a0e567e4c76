"""Fixtures for the evaluation library tests (helpers live in synthetic.py)."""

import pandas as pd
import pytest


@pytest.fixture
def prompt_table() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt": ["a red circle", "a blue square", "a green cat", "a dog on the left", "a red dog"],
        "category": ["color", "color", "color", "location", "location"],
        "split": ["train", "train", "heldout", "train", "heldout"],
        "rarity": ["common", "rare", "common", "common", "rare"],
    })
