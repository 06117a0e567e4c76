"""The caption skew: rarity, weights that form a balanced distribution, validation, YAML round trip."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from dpok.world import CATEGORIES, CaptionSkew, caption_distribution, enumerate_prompts, parse_prompt


def test_default_rarities() -> None:
    skew = CaptionSkew()
    assert skew.rarity("a green triangle") == "rare"  # rare pair
    assert skew.rarity("four red squares") == "rare"  # rare count
    assert skew.rarity("a blue square at the bottom") == "rare"  # rare side
    assert skew.rarity("a red circle") == "common"
    assert skew.rarity("a blue triangle") == "unseen"
    assert skew.rarity(parse_prompt("A Blue Triangle.")) == "unseen"


def test_default_unseen_prompts_use_common_features_only() -> None:
    skew = CaptionSkew()
    assert len(skew.unseen_prompts) >= 4
    assert {parse_prompt(p).category for p in skew.unseen_prompts} == set(CATEGORIES)
    assert all(skew.rare_features(p) == 0 for p in skew.unseen_prompts)


def test_weights_multiply_by_the_rare_factor_per_rare_feature() -> None:
    skew = CaptionSkew()
    common = skew.weight("a red circle")
    assert skew.weight("a green triangle") == pytest.approx(skew.rare_factor * common)
    assert skew.weight("a yellow circle") == pytest.approx(skew.rare_factor * common)
    # Two rare features: a rare pair at a rare side.
    doubly_rare = skew.weight("a green triangle at the bottom")
    assert doubly_rare == pytest.approx(skew.rare_factor**2 * skew.weight("a red circle at the top"))
    assert skew.weight("a blue triangle") == 0.0


def test_caption_distribution_is_normalised_and_balanced_over_categories() -> None:
    prompts, probs = caption_distribution(CaptionSkew())
    assert prompts == enumerate_prompts()
    assert probs.sum() == pytest.approx(1.0) and np.all(probs >= 0)
    categories = np.array([parse_prompt(p).category for p in prompts])
    for category in CATEGORIES:
        assert probs[categories == category].sum() == pytest.approx(0.25)
    unseen = np.isin(prompts, CaptionSkew().unseen_prompts)
    assert np.all(probs[unseen] == 0) and np.all(probs[~unseen] > 0)


def test_category_weights_set_the_category_mass() -> None:
    skew = CaptionSkew(category_weights={"color": 2.0, "count": 1.0, "composition": 1.0, "location": 0.0})
    prompts, probs = caption_distribution(skew)
    categories = np.array([parse_prompt(p).category for p in prompts])
    assert probs[categories == "color"].sum() == pytest.approx(0.5)
    assert probs[categories == "location"].sum() == 0.0


def test_no_skew_is_uniform_within_a_category() -> None:
    skew = CaptionSkew(rare_factor=1.0, unseen_prompts=())
    prompts, probs = caption_distribution(skew)
    color = [probs[i] for i, p in enumerate(prompts) if parse_prompt(p).category == "color"]
    assert np.allclose(color, 0.25 / 12)


def test_dict_round_trip_uses_plain_types() -> None:
    skew = CaptionSkew(
        rare_pairs=(("red", "square"),), rare_counts=(2, 3), rare_factor=0.1, unseen_prompts=("A red circle.",)
    )
    data = skew.to_dict()
    assert json.loads(json.dumps(data)) == data  # lists, dicts, str, numbers only
    assert data["rare_pairs"] == [["red", "square"]] and data["unseen_prompts"] == ["a red circle"]
    assert CaptionSkew.from_dict(data) == skew
    assert hash(CaptionSkew.from_dict(data)) == hash(skew)
    assert CaptionSkew.from_dict({}) == CaptionSkew()
    assert pickle.loads(pickle.dumps(skew)) == skew == copy.deepcopy(skew)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rare_pairs": (("purple", "circle"),)}, "colour, shape"),
        ({"rare_pairs": (("red", "hexagon"),)}, "colour, shape"),
        ({"rare_counts": (5,)}, "rare_counts"),
        ({"rare_sides": ("middle",)}, "unknown side"),
        ({"rare_factor": 0.0}, r"\(0, 1\]"),
        ({"rare_factor": 1.5}, r"\(0, 1\]"),
        ({"rare_factor": float("nan")}, r"\(0, 1\]"),
        ({"category_weights": {"color": 1.0}}, "exactly the keys"),
        ({"category_weights": {c: 0.0 for c in CATEGORIES}}, "positive"),
        ({"category_weights": {**{c: 1.0 for c in CATEGORIES}, "count": -1.0}}, ">= 0"),
        ({"unseen_prompts": ("a purple circle",)}, "'purple'"),
        ({"unseen_prompts": ("a red circle", "A red circle.")}, "twice"),
        ({"unseen_prompts": tuple(enumerate_prompts("color"))}, "every 'color' prompt is unseen"),
    ],
)
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CaptionSkew(**kwargs)


def test_from_dict_rejects_unknown_keys_and_non_lists() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        CaptionSkew.from_dict({"rare_colours": ["red"]})
    with pytest.raises(ValueError, match="must be a list"):
        CaptionSkew.from_dict({"unseen_prompts": "a red circle"})


def test_pretrain_parameters_use_the_default_skew(project_root):
    """The shipped CSVs are labelled with CaptionSkew(); the base model must be trained on the same."""
    import yaml

    params = yaml.safe_load((project_root / "conf/base/parameters_pretrain.yml").read_text())
    assert CaptionSkew.from_dict(params["pretrain"]["skew"]) == CaptionSkew()
