"""scripts/experiments_table.py on synthetic experiment results: the paired deltas, the CI, the table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("experiments_table", ROOT / "scripts" / "experiments_table.py")
table_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table_script)


def _run(name: str, seed: int, gain: float, rng) -> dict:
    prompts = {"prompt": ["a", "b", "c"], "category": ["x", "y", "x"], "split": ["train", "train", "heldout"]}
    base = rng.random(3 * 8)
    return {
        "name": name, "seed": seed, "overrides": [], "rounds": 10, "train_seconds": 60.0, "images_per_prompt": 8,
        "prompts": prompts, "base": {"judge": base.tolist(), "quality": [0.9] * 24},
        "finetuned": {"judge": (base + gain * np.r_[np.ones(16), np.zeros(8)]).tolist(), "quality": [0.9] * 24},
        "history": [{"kl_bound_nats": 1.0, "value_variance_ratio": 0.5, "baseline_variance_ratio": 0.4}],
    }


def test_the_table_reports_each_arms_paired_gain_with_a_ci(tmp_path):
    rng = np.random.default_rng(0)
    for seed, gain in ((0, 0.2), (1, 0.3)):
        (tmp_path / f"better_seed{seed}.json").write_text(json.dumps(_run("better", seed, gain, rng)))
    (tmp_path / "same_seed0.json").write_text(json.dumps(_run("same", 0, 0.0, rng)))
    summary = table_script.summarise(tmp_path)
    estimate, low, high = summary["better"]["judge_train"]
    assert estimate == np.float64(0.25) or abs(estimate - 0.25) < 1e-9
    assert low >= 0.2 - 1e-9 and high <= 0.3 + 1e-9 and low < high  # resampling the two seeds' runs
    assert summary["better"]["judge_heldout"][0] == 0.0 and summary["same"]["judge_train"] == (0.0, 0.0, 0.0)
    assert summary["better"]["quality_ratio"] == 1.0 and summary["better"]["baseline_variance_ratio"] == 0.4
    text = table_script.markdown(summary)
    assert "| better | 2 | 10 | +0.250 [+0.200, +0.300] | +0.200, +0.300 |" in text
