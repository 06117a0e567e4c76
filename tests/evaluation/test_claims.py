"""The paper-claims verdicts (dpok.evaluation.claims) on synthetic experiment results: a difference the numbers
show is supported (or refuted when it points the other way), equal arms are equivalent, noisy ones are not
decided and say what they could have detected; the statistics against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, ttest_ind
from scipy.stats import t as t_dist

from dpok.evaluation.claims import (
    EQUIVALENT,
    NOT_DECIDED,
    NOT_RUN,
    REFUTED,
    SUPPORTED,
    Decision,
    arm_label,
    arm_table,
    claims,
    conjunction,
    decide,
    difference,
    interval,
    minimum_detectable_effect,
    power_seeds,
    results_markdown,
    training_curves,
    verdict_from_intervals,
)

PROMPTS = [f"prompt {i}" for i in range(8)]
CATEGORIES = ("color", "count", "composition", "location")


def synthetic(gains: dict[str, float], quality: dict[str, float], seeds=(0, 1, 2), noise=0.01) -> pd.DataFrame:
    """Per-prompt results: each arm's fine-tuned judge = base + its gain (± noise), quality × its factor."""
    rng = np.random.default_rng(0)
    rows = []
    for arm, gain in gains.items():
        for seed in seeds:
            for i, prompt in enumerate(PROMPTS):
                base = 0.4 + 0.05 * i
                rows.append({"arm": arm, "seed": seed, "prompt": prompt, "split": "train" if i < 6 else "heldout",
                             "judge_base": base, "judge_tuned": base + gain + rng.normal(0, noise),
                             "quality_base": 0.9, "quality_tuned": 0.9 * quality[arm] + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def single_prompt(gains: dict[str, dict[str, float]], seeds=(0, 1, 2), noise=0.01, calls=800) -> pd.DataFrame:
    """Single-prompt runs: one row per (arm, category, seed), the category's one prompt, quality kept (to a
    tenth of the judge's noise, so that it is shown to be kept within ±0.01)."""
    rng = np.random.default_rng(2)
    return pd.DataFrame([
        {"arm": arm, "seed": seed, "category": category, "prompt": f"a {category} prompt", "split": "train",
         "protocol": "single", "reward_calls": calls, "judge_base": 0.35,
         "judge_tuned": 0.35 + gain + rng.normal(0, noise), "quality_base": 0.9,
         "quality_tuned": 0.9 + rng.normal(0, noise / 10)}
        for arm, per_category in gains.items() for category, gain in per_category.items() for seed in seeds
    ])


def kl_table(bounds: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": a, "seed": s, "kl_bound_nats": b * (1 + 0.1 * s)} for a, b in bounds.items()
                         for s in (0, 1, 2)])


def training(slopes: dict[str, float], rounds=25) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"arm": a, "seed": s, "round": r, "trajectories": 16 * r,
                          "reward": 0.7 + slope * r / rounds + rng.normal(0, 0.02)}
                         for a, slope in slopes.items() for s in (0, 1, 2) for r in range(1, rounds + 1)])


def verdicts(per_prompt, kl, train):
    return {v["claim"]: v for v in claims(per_prompt, kl, train, resamples=400)}


def test_interval_of_a_constant_is_a_point_and_difference_is_centred():
    runs = [np.full(5, 0.3), np.full(4, 0.3)]
    result = interval(runs, resamples=200)
    assert result.mean == pytest.approx(0.3) and result.low == pytest.approx(0.3) and result.high == pytest.approx(0.3)
    diff = difference([np.full(3, 0.5)], [np.full(3, 0.2)], resamples=200)
    assert (diff.mean, diff.low, diff.high, diff.se) == pytest.approx((0.3, 0.3, 0.3, 0.0))
    spread = interval([np.array([0.0, 1.0])] * 3, resamples=500)
    assert spread.low < 0.5 < spread.high


def test_difference_se_is_the_bootstrap_standard_error():
    # One value per run: the bootstrap of the runs' mean has SE sd(values, ddof=0) / sqrt(n) = 0.5 / sqrt(2).
    diff = difference([np.array([0.0]), np.array([1.0])], [np.array([0.2])], resamples=8000)
    assert diff.se == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    assert diff.as_dict()["se"] == diff.se


def test_minimum_detectable_effect_has_80_percent_power_at_5_percent():
    se = 0.04
    mde = minimum_detectable_effect(se)
    assert mde == pytest.approx((norm.ppf(0.975) + norm.ppf(0.80)) * se)
    z = norm.ppf(0.975)  # two-sided 5 % z-test of an estimate N(mde, se²)
    assert norm.sf(z - mde / se) + norm.cdf(-z - mde / se) == pytest.approx(0.80, abs=1e-3)
    assert minimum_detectable_effect(se, alpha=0.01, power=0.9) == pytest.approx(
        (norm.ppf(0.995) + norm.ppf(0.9)) * se)


def _two_sample_power(n: int, sd: float, effect: float, alpha: float = 0.05) -> float:
    z = norm.ppf(1 - alpha / 2)
    shift = abs(effect) / (sd * np.sqrt(2 / n))
    return norm.sf(z - shift) + norm.cdf(-z - shift)


@pytest.mark.parametrize(("sd", "effect"), [(1.0, 0.5), (0.05, 0.03), (0.02, -0.01), (0.1, 0.02)])
def test_power_seeds_is_the_smallest_number_reaching_the_power(sd, effect):
    n = power_seeds(sd, effect)
    assert _two_sample_power(n, sd, effect) >= 0.80 > _two_sample_power(n - 1, sd, effect)


def test_power_seeds_reaches_its_power_in_simulation():
    sd, effect = 1.0, 0.5
    n = power_seeds(sd, effect)
    rng = np.random.default_rng(0)
    a = rng.normal(effect, sd, size=(20_000, n)).mean(axis=1)
    b = rng.normal(0.0, sd, size=(20_000, n)).mean(axis=1)
    rejected = np.abs(a - b) / (sd * np.sqrt(2 / n)) > norm.ppf(0.975)
    assert rejected.mean() == pytest.approx(0.80, abs=0.015)


def test_power_seeds_bounds_and_bad_input():
    assert power_seeds(0.0, 0.1) == 2  # no spread: still two seeds, one has nothing to test against
    assert power_seeds(0.05, 0.01) > power_seeds(0.05, 0.02) > power_seeds(0.05, 0.04)
    with pytest.raises(ValueError, match="non-zero effect"):
        power_seeds(0.05, 0.0)
    with pytest.raises(ValueError, match="sd_between_seeds"):
        power_seeds(-1.0, 0.1)


@pytest.mark.parametrize(("ci95", "ci90", "direction", "expected"), [
    ((0.01, 0.05), (0.015, 0.045), 1, SUPPORTED),
    ((-0.05, -0.01), (-0.045, -0.015), 1, REFUTED),
    ((-0.05, -0.01), (-0.045, -0.015), -1, SUPPORTED),  # the paper's direction is "smaller"
    ((0.01, 0.05), (0.015, 0.045), -1, REFUTED),
    ((-0.02, 0.025), (-0.015, 0.02), 1, EQUIVALENT),
    ((-0.02, 0.04), (-0.015, 0.031), 1, NOT_DECIDED),  # the 90 % interval reaches past +δ
    ((0.001, 0.004), (0.0015, 0.0035), 1, SUPPORTED),  # significant though inside ±δ: supported comes first
    ((float("nan"), float("nan")), (float("nan"), float("nan")), 1, NOT_DECIDED),
])
def test_verdict_from_intervals(ci95, ci90, direction, expected):
    assert verdict_from_intervals(ci95, ci90, direction, delta=0.03) == expected


def test_verdict_needs_a_direction():
    with pytest.raises(ValueError, match="direction"):
        verdict_from_intervals((0.1, 0.2), (0.1, 0.2), 0, 0.03)


def test_decide_reads_the_draws_and_says_what_was_not_decided():
    rng = np.random.default_rng(0)
    equal = decide(0.001, rng.normal(0.001, 0.005, 4000), delta=0.03)
    assert equal.verdict == EQUIVALENT and equal.text((800,)) == "equivalent within ±0.03"
    noisy = decide(0.02, rng.normal(0.02, 0.05, 4000), delta=0.03)
    assert noisy.verdict == NOT_DECIDED
    assert noisy.se == pytest.approx(0.05, rel=0.05) and noisy.mde == pytest.approx(2.8016 * noisy.se, rel=1e-3)
    assert noisy.text((800, 1600)) == ("not decided at 800/1,600 reward calls, minimum detectable effect "
                                       f"{noisy.mde:.3f}")
    assert noisy.ci95[0] < noisy.ci90[0] < noisy.ci90[1] < noisy.ci95[1]
    worse = decide(-0.1, rng.normal(-0.1, 0.01, 4000), direction=1)
    assert worse.verdict == REFUTED and worse.text() == REFUTED


def _decision(verdict: str) -> Decision:
    return Decision(verdict, 0.0, (0.0, 0.0), (0.0, 0.0), 0.0, 0.0, 0.03, 1)


@pytest.mark.parametrize(("primary", "condition", "expected"), [
    (SUPPORTED, SUPPORTED, SUPPORTED),
    (SUPPORTED, EQUIVALENT, SUPPORTED),
    (SUPPORTED, REFUTED, REFUTED),  # alignment bought with quality
    (SUPPORTED, NOT_DECIDED, NOT_DECIDED),
    (REFUTED, SUPPORTED, REFUTED),
    (NOT_DECIDED, REFUTED, REFUTED),
    (EQUIVALENT, SUPPORTED, EQUIVALENT),
    (NOT_DECIDED, SUPPORTED, NOT_DECIDED),
])
def test_conjunction_of_a_claim_and_the_condition_it_rests_on(primary, condition, expected):
    assert conjunction(_decision(primary), _decision(condition), (SUPPORTED, EQUIVALENT)).verdict == expected


def test_claims_supported_when_the_numbers_say_so():
    per_prompt = synthetic({"sft": 0.0, "rl": 0.10, "rl_kl": 0.12, "rl_kl_v": 0.15},
                           {"sft": 0.97, "rl": 0.70, "rl_kl": 0.99, "rl_kl_v": 1.0})
    result = verdicts(per_prompt, kl_table({"sft": 20, "rl": 3000, "rl_kl": 80, "rl_kl_v": 90}),
                      training({"rl": 0.1, "rl_kl": 0.05, "rl_kl_v": 0.2}))
    assert [result[c]["verdict"] for c in (1, 2, 3)] == [SUPPORTED, SUPPORTED, SUPPORTED]
    assert result[1]["judge_gain_over_sft"]["mean"] == pytest.approx(0.15, abs=0.01)
    assert result[1]["seeds"] == {"rl_kl_v": 3, "sft": 3}
    assert result[3]["reward_calls_per_run"] == [400]  # 25 rounds × 16 trajectories
    decision = result[1]["decision"]
    assert result[1]["ci_low"] == decision["ci_low"] > 0 and result[1]["effect"] == decision["mean"]
    # Welch's t on the runs' means (3 a side): the interval and the t-based MDE, against scipy's own test
    per_run = per_prompt[per_prompt["split"] == "train"].assign(
        gain=lambda t: t["judge_tuned"] - t["judge_base"]).groupby(["arm", "seed"])["gain"].mean()
    test = ttest_ind(per_run["rl_kl_v"], per_run["sft"], equal_var=False)
    assert (decision["ci_low"], decision["ci_high"]) == pytest.approx(tuple(test.confidence_interval(0.95)), rel=1e-9)
    df = test.df
    assert result[1]["minimum_detectable_effect"] == pytest.approx(
        (t_dist.ppf(0.975, df) + t_dist.ppf(0.8, df)) * decision["se"], rel=1e-9)
    assert "MDE" in result[1]["evidence"] and "seeds rl_kl_v 3, sft 3" in result[1]["evidence"]


def test_claims_contradicted_by_the_numbers_are_refuted():
    per_prompt = synthetic({"sft": 0.20, "rl": 0.05, "rl_kl": 0.05, "rl_kl_v": 0.05},
                           {"sft": 1.0, "rl": 1.0, "rl_kl": 0.80, "rl_kl_v": 1.0})
    result = verdicts(per_prompt, kl_table({"sft": 20, "rl": 50, "rl_kl": 80, "rl_kl_v": 90}),
                      training({"rl": 0.1, "rl_kl": 0.2, "rl_kl_v": 0.0}))
    assert [result[c]["verdict"] for c in (1, 2, 3)] == [REFUTED, REFUTED, REFUTED]


def test_alignment_bought_with_quality_is_refuted_and_equal_arms_are_equivalent():
    per_prompt = synthetic({"sft": 0.0, "rl": 0.1, "rl_kl": 0.1, "rl_kl_v": 0.2},
                           {"sft": 1.0, "rl": 1.0, "rl_kl": 1.0, "rl_kl_v": 0.6}, seeds=range(6))
    result = verdicts(per_prompt, kl_table({"rl": 50, "rl_kl": 50, "rl_kl_v": 50, "sft": 5}),
                      training({"rl": 0.1, "rl_kl": 0.1, "rl_kl_v": 0.1}))
    assert result[1]["verdict"] == REFUTED  # more alignment, but quality 0.6 × base
    assert result[1]["quality_ratio_over_sft"]["mean"] == pytest.approx(-0.4, abs=0.02)
    assert result[2]["verdict"] == EQUIVALENT and result[2]["verdict_text"] == "equivalent within ±0.01"
    assert "no over-optimisation to prevent" in result[2]["evidence"]
    assert result[3]["verdict"] == EQUIVALENT and result[3]["verdict_text"] == "equivalent within ±0.03"


def test_one_run_an_arm_is_not_decided_however_large_the_difference():
    per_prompt = single_prompt({"sft": {"location": 0.0}, "rl_kl_v": {"location": 0.5}}, seeds=(0,))
    result = claims(per_prompt, kl_table({}), training({}), resamples=50)[0]
    assert result["verdict"] == NOT_DECIDED and result["per_category"]["location"]["verdict"] == NOT_DECIDED
    assert result["effect"] == pytest.approx(0.5, abs=0.05)
    assert result["verdict_text"] == "not decided at 800 reward calls: fewer than two runs in an arm"


def test_noisy_runs_are_not_decided_and_quote_budget_and_detectable_effect():
    per_prompt = synthetic({"sft": 0.0, "rl_kl_v": 0.02}, {"sft": 1.0, "rl_kl_v": 1.0}, seeds=(0, 1), noise=0.15)
    per_prompt["reward_calls"] = 1920
    result = claims(per_prompt, kl_table({}), training({}), resamples=400)[0]
    assert result["verdict"] == NOT_DECIDED
    assert result["verdict_text"].startswith("not decided at 1,920 reward calls, minimum detectable effect ")
    assert result["decision"]["minimum_detectable_effect"] > 0.05
    assert result["seeds"] == {"rl_kl_v": 2, "sft": 2} and result["reward_calls_per_run"] == [1920]


def test_missing_arms_are_not_run_yet_and_say_which():
    per_prompt = synthetic({"rl_kl_v": 0.1}, {"rl_kl_v": 1.0})
    result = verdicts(per_prompt, kl_table({"rl_kl_v": 50}), training({"rl_kl_v": 0.1}))
    assert all(v["verdict"] == NOT_RUN for v in result.values())
    assert "not run yet: sft" in result[1]["evidence"] and "rl, rl_kl" in result[2]["evidence"]


def test_claims_one_and_two_use_single_prompt_runs_per_category_and_pooled():
    gains = {"sft": {"color": 0.0, "count": 0.1}, "rl_kl_v": {"color": 0.2, "count": 0.1},
             "rl": {"color": 0.1, "count": 0.1}, "rl_kl": {"color": 0.1, "count": 0.1}}
    single = single_prompt(gains)
    # Multi-prompt rows in the same table must not reach claims 1–2 (they would refute claim 1).
    multi = synthetic({"sft": 0.5, "rl_kl_v": 0.0}, {"sft": 1.0, "rl_kl_v": 1.0}).assign(protocol="multi")
    kl = pd.concat([kl_table({"rl": 300, "rl_kl": 50}).assign(category=c, protocol="single")
                    for c in ("color", "count")])
    train = pd.concat([training({"rl_kl": 0.05, "rl_kl_v": 0.2}).assign(protocol="multi"),
                       training({"rl_kl": 0.3, "rl_kl_v": 0.0}).assign(protocol="single")])
    result = verdicts(pd.concat([single, multi], ignore_index=True), kl, train)
    per_category = result[1]["per_category"]
    assert per_category["color"]["verdict"] == SUPPORTED and per_category["count"]["verdict"] == EQUIVALENT
    assert result[1]["verdict"] == SUPPORTED
    assert result[1]["judge_gain_over_sft"]["mean"] == pytest.approx(0.1, abs=0.01)
    assert per_category["color"]["seeds"] == {"rl_kl_v": 3, "sft": 3}
    assert per_category["color"]["reward_calls_per_run"] == [800]
    assert "800 reward calls" in per_category["color"]["evidence"]
    assert result[2]["per_category"]["count"]["verdict"] == EQUIVALENT
    assert result[3]["verdict"] == SUPPORTED  # the multi-prompt training curves, not the single-prompt ones


def test_claim_two_reports_diversity_beside_its_verdict_when_runs_measured_it():
    gains = {"rl": {"color": 0.3}, "rl_kl": {"color": 0.2}}
    single = single_prompt(gains, seeds=range(5))
    rng = np.random.default_rng(3)
    collapse = {"rl": 0.6, "rl_kl": 0.95}  # without KL the prompt's images become alike
    single["diversity_base"] = 0.2
    single["diversity_tuned"] = [0.2 * collapse[arm] + rng.normal(0, 0.002) for arm in single["arm"]]
    kl = kl_table({"rl": 300, "rl_kl": 50}).assign(category="color", protocol="single")
    claim = verdicts(single, kl, training({}))[2]
    kept = claim["diversity_kept_by_kl"]
    assert kept["verdict"] == SUPPORTED and kept["mean"] == pytest.approx(0.35, abs=0.02)
    assert "diversity × base, with KL − without +0.35" in claim["evidence"]
    assert claim["verdict"] != SUPPORTED or claim["quality_kept_by_kl"]["verdict"] == SUPPORTED  # quality decides
    table = arm_table(single, kl)
    assert table.loc["rl", "diversity_ratio"].mean == pytest.approx(0.6, abs=0.01)
    assert "| diversity × base |" in results_markdown(table, [claim], single=table)
    # runs without the measure: no column, no line
    plain = single.drop(columns=["diversity_base", "diversity_tuned"])
    assert "diversity_kept_by_kl" not in verdicts(plain, kl, training({}))[2]
    assert arm_table(plain, kl).loc["rl", "diversity_ratio"] is None


def test_pooling_keeps_only_categories_every_compared_arm_ran():
    single = single_prompt({"sft": {"color": 0.0}, "rl_kl_v": {"color": 0.2, "count": -0.5}})
    result = claims(single, kl_table({}), training({}), resamples=300)[0]
    assert result["verdict"] == SUPPORTED and result["evidence"].startswith("categories color: ")
    assert result["per_category"]["count"]["verdict"] == NOT_RUN
    assert "not run yet: sft" in result["per_category"]["count"]["evidence"]
    apart = single_prompt({"sft": {"color": 0.0}, "rl_kl_v": {"count": 0.2}})
    evidence = claims(apart, kl_table({}), training({}), resamples=50)[0]["evidence"]
    assert "no category run by all of rl_kl_v, sft" in evidence


def test_no_single_prompt_run_yet_leaves_claims_one_and_two_not_run():
    multi = synthetic({"sft": 0.0, "rl_kl_v": 0.2}, {"sft": 1.0, "rl_kl_v": 1.0}).assign(protocol="multi")
    train = training({"rl_kl": 0.05, "rl_kl_v": 0.2}).assign(protocol="multi")
    result = verdicts(multi, kl_table({"rl": 1}).assign(protocol="multi"), train)
    assert result[1]["verdict"] == NOT_RUN and result[2]["verdict"] == NOT_RUN and result[3]["verdict"] == SUPPORTED
    empty = claims(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), resamples=50)
    assert [v["verdict"] for v in empty] == [NOT_RUN] * 3


def test_arm_labels_read_the_beta_of_a_sweep_arm():
    assert arm_label("rl_kl_b0.03") == "RL + KL, β = 0.03" and arm_label("paper").startswith("DPOK with the paper")


def test_table_and_markdown_carry_every_arm_and_verdict():
    per_prompt = synthetic({"sft": 0.0, "rl_kl_v": 0.15}, {"sft": 0.97, "rl_kl_v": 1.0})
    kl = kl_table({"sft": 20, "rl_kl_v": 90})
    table = arm_table(per_prompt, kl, "train", resamples=300)
    assert list(table.index) == ["sft", "rl_kl_v"] and table.loc["rl_kl_v", "seeds"] == 3
    assert table.loc["rl_kl_v", "prompts"] == 6
    assert table.loc["rl_kl_v", "judge_delta"].mean == pytest.approx(0.15, abs=0.01)
    assert table.loc["sft", "kl_bound_range"] == pytest.approx((20, 24))
    train = training({"rl_kl_v": 0.1})
    single = single_prompt({"sft": {"color": 0.0, "count": 0.1}, "rl_kl_v": {"color": 0.2, "count": 0.1}})
    found = claims(single, kl, train, resamples=300)
    found[0]["protocol"] = "single prompt: color: a color prompt; count: a count prompt"
    text = results_markdown(table, found, arm_table(per_prompt, kl, "heldout", 300), "intro",
                            (("curves", "results/x.png"),), single=arm_table(single, kl, "train", 300))
    assert "| 1 |" in text and "**supported**" in text and "RL + KL + value function" in text
    assert "| 1 · color | color prompt only | **supported** |" in text
    assert "| 1 · count | count prompt only | **equivalent within ±0.03** |" in text
    assert "(single prompt: color: a color prompt; count: a count prompt) (pooled over categories)" in text
    assert "**not run yet: rl, rl_kl**" in text
    assert "held-out prompts" in text and "single-prompt runs" in text and "![curves](results/x.png)" in text
    image = training_curves(train, base_reward=0.7)
    assert image.size[0] > 300
