"""metrics.json against a direct computation."""

import json

import numpy as np
import pytest
from synthetic import paired_manifests

from dpok.evaluation import bootstrap_mean_ci, comparison_metrics, flat_metrics, pair_manifests, per_prompt_differences


def test_metrics_match_a_direct_computation():
    base, tuned = paired_manifests()
    tuned = tuned.sample(frac=1.0, random_state=0)  # row order must not matter: pairs are matched by (prompt, seed)
    metrics = comparison_metrics(pair_manifests(base, tuned, ["r"]), {"r": "reward"}, n_resamples=500, seed=3)
    json.dumps(metrics, allow_nan=False)

    merged = base.merge(tuned[["prompt", "seed", "r"]], on=["prompt", "seed"], suffixes=("_b", "_t"))
    assert metrics["n_images"] == len(base) and metrics["n_prompts"] == 4
    assert metrics["all"]["r"]["base"]["mean"] == pytest.approx(base["r"].mean())
    assert metrics["all"]["r"]["finetuned"]["mean"] == pytest.approx(tuned["r"].mean())
    assert metrics["all"]["r"]["difference"]["mean"] == pytest.approx((merged["r_t"] - merged["r_b"]).mean())

    for split, group in base.groupby("split"):
        assert metrics["per_split"][split]["r"]["base"]["mean"] == pytest.approx(group["r"].mean())
        for category, sub in group.groupby("category"):
            block = metrics["per_split_category"][split][category]
            assert block["n"] == len(sub)
            assert block["r"]["base"]["mean"] == pytest.approx(sub["r"].mean())
    assert set(metrics["per_split_category"]["train"]) == {"a", "b"}
    assert set(metrics["per_split_category"]["heldout"]) == {"b"}

    # The interval of one group is the stratified bootstrap of its pairs, seeded by the group's name.
    group = merged[merged["split"] == "train"]
    from dpok.evaluation.metrics import _group_seed

    direct = bootstrap_mean_ci(
        (group["r_t"] - group["r_b"]).to_numpy(), n_resamples=500, seed=_group_seed(3, "split=train"),
        strata=group["prompt"].to_numpy(),
    )
    diff = metrics["per_split"]["train"]["r"]["difference"]
    assert (diff["mean"], diff["ci_low"], diff["ci_high"]) == pytest.approx((direct.estimate, direct.low, direct.high))
    assert diff["ci_low"] > 0  # the synthetic +0.1 effect is found


def test_mismatched_manifests_are_refused():
    base, tuned = paired_manifests()
    with pytest.raises(ValueError, match="different \\(prompt, seed\\) pairs"):
        pair_manifests(base, tuned.iloc[1:], ["r"])
    with pytest.raises(ValueError, match="twice"):
        pair_manifests(base, tuned.iloc[[0, 0, 1]], ["r"])
    with pytest.raises(ValueError, match="lacks column"):
        pair_manifests(base, tuned.drop(columns="r"), ["r"])


def test_per_prompt_differences_and_flat_metrics():
    base, tuned = paired_manifests(effect=0.0)
    tuned.loc[tuned["prompt"] == "p3", "r"] += 1.0
    paired = pair_manifests(base, tuned, ["r"])
    table = per_prompt_differences(paired, "r")
    assert table["prompt"].iloc[0] == "p3"
    assert table["difference"].iloc[0] == pytest.approx(
        (tuned[tuned.prompt == "p3"]["r"].to_numpy() - base[base.prompt == "p3"]["r"].to_numpy()).mean()
    )
    flat = flat_metrics(comparison_metrics(paired, {"r": "reward"}, n_resamples=100))
    assert "eval.all.r.difference.mean" in flat and "eval.train.a.r.base.ci_low" in flat
    assert all(np.isfinite(v) for v in flat.values())
