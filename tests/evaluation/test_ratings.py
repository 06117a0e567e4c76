"""Blinded pair export and ratings import (library level)."""

import re

import numpy as np
import pandas as pd
import pytest
from synthetic import paired_manifests

from dpok.evaluation import RatingsError, build_pairs, render_page, unblind, validate_ratings, win_rates

XSS = "<img src=x onerror=alert(1)>"


def _pairs(pairs_per_prompt=3, seed=5):
    base, tuned = paired_manifests(n_seeds=6)
    return build_pairs(base, tuned, pairs_per_prompt=pairs_per_prompt, seed=seed)


def test_pairs_are_blinded_balanced_shuffled_and_reproducible():
    pairs, key = _pairs()
    assert list(pairs.columns) == ["pair_id", "prompt", "left_image", "right_image"]
    assert len(pairs) == 12 and key["pair_id"].tolist() == pairs["pair_id"].tolist()
    assert all(re.fullmatch(r"[0-9a-f]{12}", p) for p in pairs["pair_id"])
    images = pd.concat([pairs["left_image"], pairs["right_image"]])
    assert images.is_unique and all(re.fullmatch(r"img/[0-9a-f]{12}\.png", i) for i in images)
    assert (key["left_model"] == "finetuned").sum() == 6  # balanced sides
    assert set(zip(key["left_model"], key["right_model"])) == {("base", "finetuned"), ("finetuned", "base")}
    assert key.groupby("prompt").size().eq(3).all() and not key.duplicated(["prompt", "seed"]).any()
    # The shown order is shuffled, not grouped by prompt.
    assert pairs["prompt"].tolist() != sorted(pairs["prompt"].tolist())
    again_pairs, again_key = _pairs()
    pd.testing.assert_frame_equal(again_key, key)
    assert not _pairs(seed=6)[1]["pair_id"].equals(key["pair_id"])
    assert (key["export_seed"] == 5).all()
    left_src = key.apply(lambda r: r["left_source"].startswith(r["left_model"] + "/"), axis=1)
    assert left_src.all()


def test_page_escapes_prompts_and_names_no_model():
    pairs, _ = _pairs()
    pairs.loc[0, "prompt"] = XSS
    page = render_page(pairs, title="Rate <these>", export_id="abc")
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Rate &lt;these&gt;" in page
    for word in ("base", "finetuned", "fine-tuned", "lora", "pretrained", "seed"):
        assert word not in page.lower(), word
    assert "http://" not in page and "https://" not in page
    assert page.count('class="pair"') == len(pairs)


def _ratings_for(key, text_pref, quality_pref, rater="r1"):
    """Answers that pick the model named by text_pref/quality_pref(pair index) on each side."""
    rows = []
    for i, row in enumerate(key.to_dict("records")):
        answers = []
        for pref in (text_pref(i), quality_pref(i)):
            answers.append("tie" if pref == "tie" else ("left" if row["left_model"] == pref else "right"))
        rows.append({"pair_id": row["pair_id"], "rater": rater, "q_text": answers[0], "q_quality": answers[1]})
    return pd.DataFrame(rows)


def test_import_gives_the_win_rates_the_ratings_were_made_with():
    _, key = _pairs()
    # text: fine-tuned wins 9, base wins 2, tie 1; quality: fine-tuned 3, base 9.
    text = lambda i: "finetuned" if i < 9 else ("base" if i < 11 else "tie")  # noqa: E731
    quality = lambda i: "finetuned" if i < 3 else "base"  # noqa: E731
    ratings = validate_ratings({"a.csv": _ratings_for(key, text, quality)}, key)
    results = win_rates(unblind(ratings, key))
    t, q = results["questions"]["text"]["all"], results["questions"]["quality"]["all"]
    assert (t["finetuned_wins"], t["base_wins"], t["ties"]) == (9, 2, 1)
    assert t["finetuned_win_rate"] == pytest.approx(9 / 11) and t["tie_rate"] == pytest.approx(1 / 12)
    assert (q["finetuned_wins"], q["base_wins"]) == (3, 9) and q["finetuned_win_rate"] == pytest.approx(0.25)
    assert t["ci_low"] < 9 / 11 < t["ci_high"]
    per_category = results["questions"]["text"]["per_category"]
    assert sum(block["n_answers"] for block in per_category.values()) == 12
    expected_a = sum(1 for i, c in enumerate(key["category"]) if c == "a" and i < 9)
    assert per_category["a"]["finetuned_wins"] == expected_a


def test_answers_are_case_and_space_tolerant_and_may_be_partial():
    _, key = _pairs()
    frame = pd.DataFrame({"pair_id": key["pair_id"][:2], "rater": ["x", "x"], "q_text": [" Left", ""],
                          "q_quality": ["TIE", "right"], "comment": ["", "nice"]})
    ratings = validate_ratings({"a.csv": frame}, key)
    assert ratings["q_text"].tolist() == ["left", ""] and ratings["q_quality"].tolist() == ["tie", "right"]
    answers = unblind(ratings, key)
    assert len(answers) == 3  # one unanswered question


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda f: f.assign(pair_id=["deadbeef0000"] + f["pair_id"].tolist()[1:]),
            r"b\.csv', line 2: unknown pair_id 'deadbeef0000'",
        ),
        (
            lambda f: pd.concat([f, f.iloc[[1]]]),
            r"b\.csv', line 14: duplicate answer by rater 'r1'.*first at ratings file 'b\.csv', line 3",
        ),
        (
            lambda f: f.assign(q_quality=["left", "maybe"] + f["q_quality"].tolist()[2:]),
            r"b\.csv', line 3: q_quality = 'maybe'",
        ),
        (lambda f: f.assign(rater=[""] + f["rater"].tolist()[1:]), r"b\.csv', line 2: empty rater"),
        (lambda f: f.drop(columns="q_text"), r"b\.csv' lacks column\(s\) \['q_text'\]"),
    ],
)
def test_bad_ratings_name_the_file_and_line(mutate, message):
    _, key = _pairs()
    good = _ratings_for(key, lambda i: "base", lambda i: "base")
    with pytest.raises(RatingsError, match=message):
        validate_ratings({"a.csv": good.head(0), "b.csv": mutate(good)}, key)


def test_duplicates_across_files_and_no_files():
    _, key = _pairs()
    good = _ratings_for(key, lambda i: "base", lambda i: "base")
    with pytest.raises(RatingsError, match="duplicate answer"):
        validate_ratings({"a.csv": good.head(3), "b.csv": good.iloc[2:4]}, key)
    validate_ratings({"a.csv": good, "b.csv": good.assign(rater="r2")}, key)  # two raters, same pairs: fine
    with pytest.raises(RatingsError, match="no ratings files"):
        validate_ratings({}, key)


def test_empty_win_rate_is_null_not_nan():
    _, key = _pairs()
    ties = _ratings_for(key, lambda i: "tie", lambda i: "tie")
    results = win_rates(unblind(validate_ratings({"a.csv": ties}, key), key))
    block = results["questions"]["text"]["all"]
    assert block["finetuned_win_rate"] is None and block["tie_rate"] == 1.0
    assert np.isfinite(block["n_answers"])
