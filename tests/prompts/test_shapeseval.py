"""The ShapesEval split: the committed file is the one conf/base makes, its properties, its tags, and the gate
that refuses a bad file before any sampling."""

import dataclasses
import io
import math

import pandas as pd
import pytest

from dpok.prompts.headroom import prompt_hash
from dpok.prompts.shapeseval import (
    COLUMNS,
    SPLIT_FILE,
    ShapesEvalFileError,
    ShapesEvalSplit,
    build_split,
    check_split_table,
    novelty_tags,
    split_csv_text,
    split_sizes,
)
from dpok.world.grammar import CATEGORIES, enumerate_prompts, parse_prompt
from helpers import ROOT, base_parameters, load_config


def _config(**changes) -> ShapesEvalSplit:
    return ShapesEvalSplit.from_dict({**base_parameters()["shapeseval"]["split"], **changes})


@pytest.fixture(scope="module")
def committed() -> pd.DataFrame:
    return pd.read_csv(ROOT / SPLIT_FILE)


def test_the_committed_file_is_the_split_conf_base_makes():
    """The split can never drift silently: a changed salt, fraction or rule fails here until the file is
    rewritten (`python scripts/make_shapeseval.py`)."""
    assert (ROOT / SPLIT_FILE).read_text(encoding="utf-8") == split_csv_text(build_split(_config()))
    # the pipeline reads the file the script writes
    assert load_config(ROOT)["catalog"]["shapeseval_prompts"]["filepath"] == SPLIT_FILE


def test_the_split_covers_the_grammar_once_with_every_category_on_both_sides(committed):
    assert list(committed.columns) == list(COLUMNS)
    assert sorted(committed["prompt"]) == sorted(enumerate_prompts()) and committed["prompt"].is_unique
    train = set(committed.loc[committed["split"] == "train", "prompt"])
    validation = set(committed.loc[committed["split"] == "validation", "prompt"])
    test = set(committed.loc[committed["split"] == "test", "prompt"])
    assert not train & test and not validation & test and not train & validation
    sizes = split_sizes(committed)
    for category in CATEGORIES:
        n = len(enumerate_prompts(category))
        row = sizes.loc[category]
        assert min(row["train"], row["validation"], row["test"]) >= 1, category
        assert abs(row["test"] - n / 3) <= 1, (category, row.to_dict())  # about one third
        pool = n - row["test"]
        assert abs(row["validation"] - 0.15 * pool) <= 1, (category, row.to_dict())
    for prompt in test:  # every test prompt parses to its canonical self
        assert parse_prompt(prompt).prompt == prompt
    assert check_split_table(committed, SPLIT_FILE).equals(committed)


def test_test_prompts_are_the_first_of_each_category_in_salted_hash_order(committed):
    salt = _config().hash_salt
    for category, group in committed.groupby("category"):
        ordered = sorted(group["prompt"], key=lambda p: prompt_hash(p, salt))
        n_test, n_validation = (group["split"] == "test").sum(), (group["split"] == "validation").sum()
        assert set(ordered[:n_test]) == set(group.loc[group["split"] == "test", "prompt"]), category
        assert set(ordered[n_test : n_test + n_validation]) == set(group.loc[group["split"] == "validation", "prompt"])
    other = build_split(_config(hash_salt="another draw"))
    assert not other["split"].equals(committed["split"])


def test_quotas_round_half_up_and_keep_both_sides():
    # 2 prompts a category: one test (round(2/3)), the pool of one stays train (validation never takes it all)
    prompts = ["a red circle", "a blue square", "two red circles", "three blue squares",
               "a red circle and a blue square", "a blue square and a red circle",
               "a red circle on the left", "a blue square at the top"]
    table = build_split(_config(), prompts)
    assert split_sizes(table).loc[list(CATEGORIES), ["train", "validation", "test"]].values.tolist() == [[1, 0, 1]] * 4
    table = build_split(_config(test_fraction=0.5, validation_fraction=0.5), enumerate_prompts("color"))
    # 12 → 6 test; pool 6 → 3 validation
    assert split_sizes(table).loc["color", ["train", "validation", "test"]].tolist() == [3, 3, 6]


def test_novelty_and_depth_tags_against_a_hand_labelled_table():
    table = pd.DataFrame([
        ("a red circle", "train"),
        ("four blue squares", "validation"),
        ("a blue square and a yellow triangle", "train"),
        ("a red circle on the left", "test"),                 # red circle seen
        ("a green triangle", "test"),                         # green triangle never in the pool
        ("a red circle and a blue square", "test"),           # both pairs seen, never together
        ("a yellow triangle and a blue square", "test"),      # the other order is in the pool
        ("three green circles", "test"),                      # green circle never in the pool
    ], columns=["prompt", "split"])
    tags = novelty_tags(table)
    assert tags["novel_pair"].tolist() == [False, False, False, False, True, False, False, True]
    assert tags["novel_combination"].tolist() == [False, False, False, False, False, True, False, False]
    assert tags["objects"].tolist() == [1, 4, 2, 1, 1, 2, 2, 3]


def test_the_committed_tags_are_what_the_pool_implies(committed):
    pool = committed[committed["split"] != "test"]
    pool_pairs = {(g.color, g.shape) for p in pool["prompt"] for g in parse_prompt(p).groups}
    pool_combinations = {frozenset((g.color, g.shape) for g in parse_prompt(p).groups)
                         for p in pool["prompt"] if parse_prompt(p).category == "composition"}
    for row in committed[committed["split"] == "test"].itertuples():
        spec = parse_prompt(row.prompt)
        pairs = {(g.color, g.shape) for g in spec.groups}
        assert row.novel_pair == (not pairs <= pool_pairs)
        assert row.novel_combination == (spec.category == "composition" and frozenset(pairs) not in pool_combinations)
        assert row.objects == sum(g.count for g in spec.groups)
    assert not committed.loc[committed["split"] != "test", ["novel_pair", "novel_combination"]].any().any()
    # With a third held out, every colour-shape pair still occurs in the pool; novelty is in the combinations.
    assert committed["novel_combination"].sum() > 0


def test_the_split_settings_hold_no_defaults_and_name_their_key():
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ShapesEvalSplit))
    with pytest.raises(ValueError, match=r"shapeseval.split.test_fraction must be a number > 0 and < 1, got 1.0"):
        _config(test_fraction=1.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) shapeseval.split.test_share"):
        ShapesEvalSplit.from_dict({**base_parameters()["shapeseval"]["split"], "test_share": 0.3})
    with pytest.raises(ValueError, match=r"shapeseval.split.hash_salt must be a non-empty string"):
        _config(hash_salt="")


# --- the gate: one named error, naming the file, the line and the fix ---------------------------------


def _file(committed: pd.DataFrame) -> pd.DataFrame:
    """The committed table as the catalog reads it back from a CSV (so edits look like file edits)."""
    return pd.read_csv(io.StringIO(split_csv_text(committed)))


def _line_of(table: pd.DataFrame, prompt: str) -> int:
    return int(table.index[table["prompt"] == prompt][0]) + 2


def test_a_prompt_outside_the_grammar_names_the_file_line_prompt_and_fix(committed):
    table = _file(committed)
    table.loc[3, "prompt"] = "a purple circle"
    with pytest.raises(ShapesEvalFileError) as error:
        check_split_table(table, "data/01_raw/prompts/shapeseval.csv")
    message = str(error.value)
    assert message.startswith("ShapesEval split data/01_raw/prompts/shapeseval.csv: line 5: Prompt 'a purple circle'")
    assert "unknown word(s) 'purple'" in message and "triangle. Fix: write the prompt in the grammar" in message
    assert "python scripts/make_shapeseval.py" in message


def test_a_prompt_in_the_training_pool_and_in_test_is_refused(committed):
    table = _file(committed)
    test_prompt = table.loc[table["split"] == "test", "prompt"].iloc[0]
    train_row = table.index[(table["split"] == "train") & (table["category"] == parse_prompt(test_prompt).category)][0]
    # the same prompt, written differently (case, spaces, a period): still the same prompt
    table.loc[train_row, "prompt"] = "  " + test_prompt.upper() + "."
    lines = sorted([_line_of(table, test_prompt), int(train_row) + 2])
    with pytest.raises(ShapesEvalFileError, match=rf"'{test_prompt}' is both in the training pool and in test "
                                                  rf"\(lines {lines[0]}: \w+, {lines[1]}: \w+\).*Fix: keep one"):
        check_split_table(table, SPLIT_FILE)


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_category_missing_from_a_side_is_refused(committed, split):
    table = _file(committed)
    other = "train" if split == "test" else "test"
    table.loc[(table["category"] == "color") & (table["split"] == split), "split"] = other
    with pytest.raises(ShapesEvalFileError, match=rf"no {split} prompt in categories \['color'\]: every category must "
                                                  "be on both sides"):
        check_split_table(table, SPLIT_FILE)


def test_missing_columns_wrong_category_unknown_split_and_edited_tags_are_refused(committed):
    with pytest.raises(ShapesEvalFileError, match=r"missing column\(s\) \['novel_combination'\]"):
        check_split_table(_file(committed).drop(columns="novel_combination"), SPLIT_FILE)
    table = _file(committed)
    table.loc[0, "category"] = "count"
    with pytest.raises(ShapesEvalFileError, match=r"line 2: 'a red circle' is a 'color' prompt, not 'count'"):
        check_split_table(table, SPLIT_FILE)
    table = _file(committed)
    table.loc[0, "split"] = "heldout"
    with pytest.raises(ShapesEvalFileError, match=r"line 2: split 'heldout' .* not one of \['train', 'validation', "
                                                  r"'test'\]"):
        check_split_table(table, SPLIT_FILE)
    table = _file(committed)
    row = table.index[table["novel_combination"]][0]
    table.loc[row, "novel_combination"] = False
    with pytest.raises(ShapesEvalFileError, match=rf"line {row + 2}: novel_combination .* the split makes it True"):
        check_split_table(table, SPLIT_FILE)
    # moving a prompt between sides without regenerating leaves stale tags: refused too
    table = _file(committed)
    seen = table.index[(table["category"] == "composition") & (table["split"] == "test") & ~table["novel_combination"]]
    partner = parse_prompt(table.at[seen[0], "prompt"]).groups
    reverse = f"a {partner[1].color} {partner[1].shape} and a {partner[0].color} {partner[0].shape}"
    table.loc[table["prompt"] == reverse, "split"] = "test"
    with pytest.raises(ShapesEvalFileError, match=r"novel_combination .* the split makes it True"):
        check_split_table(table, SPLIT_FILE)


def test_fractions_are_documented_in_conf_base():
    text = (ROOT / "conf/base/parameters_shapeseval.yml").read_text()
    split = base_parameters()["shapeseval"]["split"]
    assert math.isclose(split["test_fraction"], 1 / 3, abs_tol=1e-3) and "python scripts/make_shapeseval.py" in text
