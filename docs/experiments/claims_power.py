"""Issue 31's power calculation, before the matrix runs: the seed-to-seed spread of each claim's measure in
runs already made, and what it implies for the minimum detectable effect (MDE) of a two-arm comparison.

    python docs/experiments/claims_power.py

- Claims 1–2 compare a run's judge gain (or quality ratio) on its training prompts between arms. The spread
  comes from the three `p_step: 4` runs on the 10 headroom prompts (docs/experiments/full/pstep4_seed*.json,
  a few-prompt run like the single-prompt protocol's; a single prompt's spread is likely larger).
- Claim 3 compares a run's mean training reward between arms on the multi-prompt default: the spread comes
  from the default's three ShapesEval-pool runs (docs/experiments/shapeseval_pool/g8sel_seed*_history.csv).
MDE = (z_0.975 + z_0.8)·σ·√(2/n) for n seeds per arm (dpok.evaluation.claims); seeds = the n that detects
the effect with 80 % power at two-sided 5 %.

A second table (eighth session, before the single-prompt matrix ran) bounds a single-prompt run's spread from
below: the evaluation's own noise, the standard error of a run's paired difference over its evaluation images
(the pilot's runs, docs/experiments/claims_pilot/*.metrics.json, 16 images), scaled to the matrix's 64 images.
Different training seeds only add to it, so the MDEs it gives are the least the matrix can reach, per
category (5 seeds an arm) and pooled over the four categories (20 runs an arm).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from dpok.evaluation.claims import minimum_detectable_effect, power_seeds  # noqa: E402

EXPERIMENTS = ROOT / "docs" / "experiments"


def judge_gains() -> list[float]:
    gains = []
    for path in sorted((EXPERIMENTS / "full").glob("pstep4_seed*.json")):
        run = json.loads(path.read_text())
        per_prompt = run["images_per_prompt"]
        train = np.repeat(np.asarray(run["prompts"]["split"]) == "train", per_prompt)
        base, tuned = np.asarray(run["base"]["judge"]), np.asarray(run["finetuned"]["judge"])
        gains.append(float((tuned - base)[train].mean()))
    return gains


def mean_training_rewards() -> list[float]:
    return [float(pd.read_csv(path)["reward_mean"].mean())
            for path in sorted((EXPERIMENTS / "shapeseval_pool").glob("g8sel_seed*_history.csv"))]


def main() -> None:
    lines = ["| measure (claims) | runs | per run | σ between seeds | MDE at 3 / 5 / 8 seeds per arm | seeds per arm for 0.03 / 0.05 / 0.10 |",
             "|---|---|---|---|---|---|"]
    for label, values in (("judge gain, training prompts (1, 2)", judge_gains()),
                          ("mean training reward over a run (3)", mean_training_rewards())):
        sigma = float(np.std(values, ddof=1))
        mde = " / ".join(f"{minimum_detectable_effect(sigma * np.sqrt(2 / n)):.3f}" for n in (3, 5, 8))
        seeds = " / ".join(str(power_seeds(sigma, effect)) for effect in (0.03, 0.05, 0.10))
        lines.append(f"| {label} | {len(values)} | {', '.join(f'{v:+.3f}' if 'gain' in label else f'{v:.3f}' for v in values)} "
                     f"| {sigma:.4f} | {mde} | {seeds} |")
    print("\n".join(lines))
    print()
    print("\n".join(single_prompt_floor()))


def single_prompt_floor(images: int = 64, seeds: int = 5, categories: int = 4) -> list[str]:
    """The evaluation-noise floor of a single-prompt run's judge gain and quality ratio, and its MDEs."""
    lines = ["| measure (claims) | pilot runs | SE of a run at 16 images (mean) | at 64 images | MDE floor, one category, 5 "
             "seeds an arm | pooled, 4 × 5 runs an arm |", "|---|---|---|---|---|---|"]
    z = 1.959963984540054  # the interval's two-sided 95 %: SE = half-width / z
    for label, score in (("judge gain (1, 2)", "shapes_judge"), ("quality difference (1, 2)", "shapes_quality")):
        errors = []
        for path in sorted((EXPERIMENTS / "claims_pilot").glob("*.metrics.json")):
            difference = json.loads(path.read_text())["per_split"]["train"][score]["difference"]
            errors.append((difference["ci_high"] - difference["ci_low"]) / (2 * z) * np.sqrt(difference["n"]))
        sd = float(np.mean(errors))  # per-image standard deviation of the paired difference
        run_se = sd / np.sqrt(images)
        one = minimum_detectable_effect(run_se * np.sqrt(2 / seeds))
        pooled = minimum_detectable_effect(run_se * np.sqrt(2 / (seeds * categories)))
        lines.append(f"| {label} | {len(errors)} | {sd / np.sqrt(16):.4f} | {run_se:.4f} | ≥ {one:.3f} | ≥ {pooled:.3f} |")
    return lines


if __name__ == "__main__":
    main()
