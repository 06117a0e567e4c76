"""The paper-claims verdicts (dpok.evaluation.claims) on synthetic experiment results: a claim that the
numbers support holds, one they contradict is reported as failing, missing arms make it inconclusive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpok.evaluation.claims import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    arm_table,
    claims,
    difference,
    interval,
    results_markdown,
    training_curves,
)

PROMPTS = [f"prompt {i}" for i in range(8)]


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
    assert (diff.mean, diff.low, diff.high) == pytest.approx((0.3, 0.3, 0.3))
    spread = interval([np.array([0.0, 1.0])] * 3, resamples=500)
    assert spread.low < 0.5 < spread.high


def test_claims_hold_when_the_numbers_say_so():
    per_prompt = synthetic({"sft": 0.0, "rl": 0.10, "rl_kl": 0.12, "rl_kl_v": 0.15},
                           {"sft": 0.97, "rl": 0.70, "rl_kl": 0.99, "rl_kl_v": 1.0})
    result = verdicts(per_prompt, kl_table({"sft": 20, "rl": 3000, "rl_kl": 80, "rl_kl_v": 90}),
                      training({"rl": 0.1, "rl_kl": 0.05, "rl_kl_v": 0.2}))
    assert [result[c]["verdict"] for c in (1, 2, 3)] == [HOLDS, HOLDS, HOLDS]
    assert result[1]["judge_gain_over_sft"]["mean"] == pytest.approx(0.15, abs=0.01)


def test_claims_contradicted_by_the_numbers_are_reported_as_failing():
    per_prompt = synthetic({"sft": 0.20, "rl": 0.05, "rl_kl": 0.05, "rl_kl_v": 0.05},
                           {"sft": 1.0, "rl": 1.0, "rl_kl": 0.80, "rl_kl_v": 1.0})
    result = verdicts(per_prompt, kl_table({"sft": 20, "rl": 50, "rl_kl": 80, "rl_kl_v": 90}),
                      training({"rl": 0.1, "rl_kl": 0.2, "rl_kl_v": 0.0}))
    assert [result[c]["verdict"] for c in (1, 2, 3)] == [FAILS, FAILS, FAILS]


def test_alignment_bought_with_quality_does_not_hold_and_equal_arms_are_inconclusive():
    per_prompt = synthetic({"sft": 0.0, "rl": 0.1, "rl_kl": 0.1, "rl_kl_v": 0.2},
                           {"sft": 1.0, "rl": 1.0, "rl_kl": 1.0, "rl_kl_v": 0.6})
    result = verdicts(per_prompt, kl_table({"rl": 50, "rl_kl": 50, "rl_kl_v": 50, "sft": 5}),
                      training({"rl": 0.1, "rl_kl": 0.1, "rl_kl_v": 0.1}))
    assert result[1]["verdict"] == FAILS  # more alignment, but quality 0.6 × base
    assert result[2]["verdict"] == INCONCLUSIVE and "no over-optimisation to prevent" in result[2]["evidence"]
    assert result[3]["verdict"] == INCONCLUSIVE


def test_missing_arms_make_a_claim_inconclusive_and_say_which():
    per_prompt = synthetic({"rl_kl_v": 0.1}, {"rl_kl_v": 1.0})
    result = verdicts(per_prompt, kl_table({"rl_kl_v": 50}), training({"rl_kl_v": 0.1}))
    assert all(v["verdict"] == INCONCLUSIVE for v in result.values())
    assert "not run yet: sft" in result[1]["evidence"] and "rl, rl_kl" in result[2]["evidence"]


def test_table_and_markdown_carry_every_arm_and_verdict(tmp_path):
    per_prompt = synthetic({"sft": 0.0, "rl_kl_v": 0.15}, {"sft": 0.97, "rl_kl_v": 1.0})
    kl = kl_table({"sft": 20, "rl_kl_v": 90})
    table = arm_table(per_prompt, kl, "train", resamples=300)
    assert list(table.index) == ["sft", "rl_kl_v"] and table.loc["rl_kl_v", "seeds"] == 3
    assert table.loc["rl_kl_v", "prompts"] == 6
    assert table.loc["rl_kl_v", "judge_delta"].mean == pytest.approx(0.15, abs=0.01)
    assert table.loc["sft", "kl_bound_range"] == pytest.approx((20, 24))
    train = training({"rl_kl_v": 0.1})
    found = claims(per_prompt, kl, train, resamples=300)
    text = results_markdown(table, found, arm_table(per_prompt, kl, "heldout", 300), "intro",
                            (("curves", "results/x.png"),))
    assert "| 1 |" in text and "**holds**" in text and "RL + KL + value function" in text
    assert "held-out prompts" in text and "![curves](results/x.png)" in text
    image = training_curves(train, base_reward=0.7)
    assert image.size[0] > 300
