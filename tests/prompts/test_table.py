"""Prompt ingestion: every supported format and every bad-input case."""

import json

import pandas as pd
import pytest

from dpok.prompts import PromptFileError, PromptsConfig, load_prompt_table
from helpers import base_parameters


def load(path, **kwargs):
    return load_prompt_table(PromptsConfig.from_dict({**base_parameters()["prompts"], "path": str(path), **kwargs}))


def test_txt_normalises_whitespace_and_drops_duplicates(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("  a red   circle \n\nA cat and a dog.\na red circle\n\t\n", encoding="utf-8")
    table, summary = load(f)
    assert table["prompt"].tolist() == ["a red circle", "A cat and a dog."]
    assert summary["duplicates_dropped"] == 1
    assert set(table["split"]) == {"train"}
    assert set(table["category"]) == {"uncategorised"}


def test_csv_keeps_category_split_and_extra_columns(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('prompt,category,split,rarity\n"a red circle, big",color,train,common\nthree blue squares,count,heldout,rare\n')
    table, summary = load(f)
    assert table.to_dict("records") == [
        {"prompt": "a red circle, big", "category": "color", "split": "train", "rarity": "common"},
        {"prompt": "three blue squares", "category": "count", "split": "heldout", "rarity": "rare"},
    ]
    assert summary["per_split"] == {"heldout": 1, "train": 1}


def test_tsv(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("category\tprompt\nx\ta, b\n")
    table, _ = load(f)
    assert table["prompt"].tolist() == ["a, b"]


def test_json_strings_and_objects(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(["one", {"prompt": "two", "category": "c"}]))
    table, _ = load(f)
    assert table["prompt"].tolist() == ["one", "two"]
    assert table["category"].tolist() == ["uncategorised", "c"]


def test_jsonl(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('"one"\n\n{"prompt": "two", "split": "heldout"}\n{"prompt": "three"}\n')
    table, _ = load(f)
    assert table["split"].tolist() == ["train", "heldout", "train"]


def test_split_assignment_is_deterministic_and_respects_fraction(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\n".join(f"prompt number {i}" for i in range(400)))
    a, _ = load(f, heldout_fraction=0.25)
    b, _ = load(f, heldout_fraction=0.25)
    assert a.equals(b)
    share = (a["split"] == "heldout").mean()
    assert 0.18 < share < 0.32


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", "", "contains no prompts"),
        ("blank.txt", "\n  \n\t\n", "contains no prompts"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
        ("noprompt.csv", "text,category\nhello,x\n", "no 'prompt' column"),
        ("empty.csv", "", "is empty"),
        ("prompts.yaml", "- a\n", "unknown extension"),
        ("badsplit.csv", "prompt,split\nhello,validation\n", "unknown split value"),
        ("bad.json", "[1, 2", "not valid JSON"),
        ("obj.json", '{"prompt": "x"}', "not a list"),
        ("badrow.jsonl", '"ok"\n{"text": 1}\n', "line 2"),
        ("ragged.csv", "prompt,category\na,b,c\n", "row 2 has 3 fields"),
    ],
)
def test_bad_files_raise_one_clear_error_naming_the_file(tmp_path, name, content, message):
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(PromptFileError, match=message) as info:
        load(f)
    assert name in str(info.value) and "Fix:" in str(info.value)


def test_prompt_longer_than_limit(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("short\n" + "x" * 50 + "\n")
    with pytest.raises(PromptFileError, match="prompt 2 has 50 characters.*max_chars=20"):
        load(f, max_chars=20)


def test_config_validation():
    with pytest.raises(ValueError, match="heldout_fraction"):
        PromptsConfig.from_dict({**base_parameters()["prompts"], "heldout_fraction": 1.5})
    with pytest.raises(ValueError, match="max_chars"):
        PromptsConfig.from_dict({**base_parameters()["prompts"], "max_chars": 0})
    with pytest.raises(ValueError, match="unknown key"):
        PromptsConfig.from_dict({"path": "a.txt", "max_char": 3})


def test_shipped_paper_prompts(project_root):
    table, _ = load(project_root / "data/01_raw/prompts/paper_single.txt")
    assert table["prompt"].tolist() == [
        "A green colored rabbit.", "A cat and a dog.", "Four wolves in the park.", "A dog on the moon."
    ]
    assert isinstance(table, pd.DataFrame)
