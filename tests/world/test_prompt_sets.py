"""The shipped prompt sets: equal to what the code generates, mostly rare, held-out prompts apart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dpok.world import CATEGORIES, CaptionSkew, make_prompt_sets, write_prompt_sets
from dpok.world.prompt_sets import EVAL_FILE, TRAIN_FILE, main, read_prompt_set

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "01_raw" / "prompts"


def test_shipped_csvs_equal_the_generated_sets() -> None:
    train_rows, eval_rows = make_prompt_sets()
    assert read_prompt_set(SHIPPED / TRAIN_FILE) == train_rows
    assert read_prompt_set(SHIPPED / EVAL_FILE) == eval_rows


def test_writing_reproduces_the_shipped_files_byte_for_byte(tmp_path: Path) -> None:
    write_prompt_sets(tmp_path)
    main([str(tmp_path / "cli")])
    for name in (TRAIN_FILE, EVAL_FILE):
        shipped = (SHIPPED / name).read_bytes()
        assert (tmp_path / name).read_bytes() == shipped
        assert (tmp_path / "cli" / name).read_bytes() == shipped


def test_train_set_is_three_per_category_and_mostly_rare() -> None:
    train_rows, _ = make_prompt_sets()
    assert len(train_rows) == 12
    assert Counter(row["category"] for row in train_rows) == {category: 3 for category in CATEGORIES}
    for category in CATEGORIES:
        rarities = [row["rarity"] for row in train_rows if row["category"] == category]
        assert rarities.count("rare") >= 2 and "unseen" not in rarities
    assert {row["split"] for row in train_rows} == {"train"}


def test_eval_set_holds_train_and_held_out_prompts() -> None:
    skew = CaptionSkew()
    train_rows, eval_rows = make_prompt_sets(skew)
    assert eval_rows[: len(train_rows)] == train_rows
    heldout = eval_rows[len(train_rows) :]
    assert {row["split"] for row in heldout} == {"heldout"}
    assert 8 <= len(heldout) <= 12
    train_prompts = {row["prompt"] for row in train_rows}
    assert not train_prompts & {row["prompt"] for row in heldout}
    assert set(skew.unseen_prompts) <= {row["prompt"] for row in heldout}
    assert {row["rarity"] for row in heldout} == {"common", "rare", "unseen"}
    for row in eval_rows:
        assert row["rarity"] == skew.rarity(row["prompt"])


def test_rarity_follows_the_skew() -> None:
    no_rare = CaptionSkew(rare_pairs=(), rare_counts=(), rare_sides=())
    train_rows, _ = make_prompt_sets(no_rare)
    assert {row["rarity"] for row in train_rows} == {"common"}


def test_custom_sets_are_validated() -> None:
    with pytest.raises(ValueError, match="both train and held-out"):
        make_prompt_sets(train_prompts=["a red circle"], heldout_prompts=["A red circle."])
    with pytest.raises(ValueError, match="more than once"):
        make_prompt_sets(train_prompts=["a red circle", "a red circle"])
    with pytest.raises(ValueError, match="'purple'"):
        make_prompt_sets(train_prompts=["a purple circle"])
