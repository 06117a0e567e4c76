"""The headroom rule on a synthetic manifest: rates, the band, the hash split, categories on both sides."""

import pandas as pd
import pytest

from dpok.prompts.headroom import (
    HeadroomRule,
    PoolRule,
    prompt_hash,
    select_headroom_prompts,
    select_pool_prompts,
    solve_rates,
)
from helpers import ROOT, base_parameters, shapeseval_table


def _scores(rates: dict[tuple[str, str], float], n: int = 10) -> pd.DataFrame:
    rows = []
    for (prompt, category), rate in rates.items():
        solved = int(round(rate * n))
        rows += [(prompt, category, 1.0)] * solved + [(prompt, category, 0.5)] * (n - solved)
    return pd.DataFrame(rows, columns=["prompt", "category", "score"])



def _rule(**changes) -> HeadroomRule:
    """conf/base's rule with ``changes``."""
    return HeadroomRule.from_dict({**base_parameters()["select_prompts"]["rule"], **changes})

def test_solve_rate_counts_samples_at_the_threshold():
    rates = solve_rates(_scores({("a", "color"): 0.3, ("b", "color"): 1.0}), solved_threshold=1.0)
    assert rates.set_index("prompt")["solve_rate"].to_dict() == {"a": 0.3, "b": 1.0}
    assert rates.set_index("prompt")["mean_score"]["a"] == pytest.approx(0.65)


def test_the_band_the_hash_order_and_both_sides():
    rule = _rule(min_solve_rate=0.1, max_solve_rate=0.8, train_per_category=2, heldout_per_category=2)
    location = {(f"loc{i}", "location"): 0.5 for i in range(6)}
    count = {("c0", "count"): 0.0, ("c1", "count"): 0.9, ("c2", "count"): 0.2, ("c3", "count"): 0.8,
             ("c4", "count"): 0.1}
    colour = {("k0", "color"): 0.4, ("k1", "color"): 1.0}
    rates = solve_rates(_scores({**location, **count, **colour}), 1.0)
    table, summary = select_headroom_prompts(rates, rule)
    chosen = set(table["prompt"])
    assert {"c0", "c1", "k1"}.isdisjoint(chosen)  # never, nearly always, always solved
    by_hash = sorted((p for p, _ in location), key=lambda p: prompt_hash(p, rule.hash_salt))
    location_rows = table[table["category"] == "location"]
    assert location_rows.loc[location_rows["split"] == "train", "prompt"].tolist() == by_hash[:2]
    assert location_rows.loc[location_rows["split"] == "heldout", "prompt"].tolist() == by_hash[2:4]
    # three qualifying count prompts: fewer than both quotas, so two go to train and one is held out
    assert summary["categories"]["count"] == {"candidates": 5, "qualifying": 3, "train": 2, "heldout": 1}
    # a single qualifying colour prompt can only be on one side, and is reported
    assert table.set_index("prompt").loc["k0", "split"] == "train"
    assert summary["one_sided_categories"] == ["color"]
    assert table["split"].tolist() == sorted(table["split"].tolist(), key=["train", "heldout"].index)
    assert summary["train"]["prompts"] == 5 and summary["heldout"]["prompts"] == 3


def test_a_different_salt_draws_differently_but_from_the_same_band():
    rates = solve_rates(_scores({(f"p{i}", "location"): 0.5 for i in range(12)}), 1.0)
    a, _ = select_headroom_prompts(rates, _rule(hash_salt="one"))
    b, _ = select_headroom_prompts(rates, _rule(hash_salt="two"))
    assert a["prompt"].tolist() != b["prompt"].tolist() and len(a) == len(b) == 6


@pytest.mark.parametrize(
    ("params", "key"),
    [({"min_solve_rate": 0.9, "max_solve_rate": 0.5}, "min_solve_rate"), ({"max_solve_rate": 1.5}, "max_solve_rate"),
     ({"train_per_category": 0}, "train_per_category"), ({"bogus": 1}, "select_prompts.rule.bogus")],
)
def test_bad_rules_name_their_key(params, key):
    with pytest.raises(ValueError, match=key):
        HeadroomRule.from_dict({**base_parameters()["select_prompts"]["rule"], **params})


def test_the_training_pool_keeps_prompts_with_signal_and_never_a_test_prompt():
    split = shapeseval_table()
    rates = pd.DataFrame({"prompt": split["prompt"], "category": split["category"], "samples": 16,
                          "solve_rate": [(i % 17) / 16 for i in range(len(split))], "mean_score": 0.5})
    rates.loc[rates["solve_rate"] > 1, "solve_rate"] = 1.0
    table = select_pool_prompts(rates, split, PoolRule(min_solve_rate=0.05, max_solve_rate=0.95))
    test = set(split.query("split == 'test'")["prompt"])
    assert not set(table["prompt"]) & test
    rate = dict(zip(rates["prompt"], rates["solve_rate"]))
    assert all(0.05 <= rate[p] <= 0.95 for p in table["prompt"])
    pool = split.query("split != 'test'")
    wanted = {p for p in pool["prompt"] if 0.05 <= rate[p] <= 0.95}
    assert set(table["prompt"]) == wanted and len(table) == len(wanted)
    side = dict(zip(pool["prompt"], pool["split"].replace({"validation": "heldout"})))
    assert (table["split"] == table["prompt"].map(side)).all()
    with pytest.raises(ValueError, match="no measured solve rate.*rerun `kedro run --pipelines select_prompts`"):
        select_pool_prompts(rates.iloc[5:], split, PoolRule(min_solve_rate=0.05, max_solve_rate=0.95))


def test_the_committed_training_file_is_the_rule_applied_to_the_committed_rates():
    """data/01_raw/prompts/shapeseval_train.csv is what `select_prompts` writes from the committed rates."""
    rates = pd.read_csv(ROOT / "data/08_reporting/headroom_candidates.csv")
    pool = base_parameters()["select_prompts"]["pool"]
    expected = select_pool_prompts(rates, shapeseval_table(), PoolRule(**pool))
    committed = pd.read_csv(ROOT / "data/01_raw/prompts/shapeseval_train.csv")
    pd.testing.assert_frame_equal(committed[["prompt", "category", "split"]], expected[["prompt", "category", "split"]])
    assert not set(committed["prompt"]) & set(shapeseval_table().query("split == 'test'")["prompt"])


@pytest.mark.parametrize("low, high, key", [(-0.1, 0.5, "min_solve_rate"), (0.6, 0.5, "min_solve_rate"),
                                            (0.1, 1.5, "max_solve_rate")])
def test_bad_pool_rules_name_their_key(low, high, key):
    with pytest.raises(ValueError, match=f"select_prompts.pool.{key}"):
        PoolRule(min_solve_rate=low, max_solve_rate=high)
