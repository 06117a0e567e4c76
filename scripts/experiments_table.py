"""The ablation table from a folder of ``scripts/experiment.py`` results (one JSON per arm and seed).

    python scripts/experiments_table.py docs/experiments/ablation [--reference default] [--json OUT]

For every arm: seeds, rounds trained, Δ judge on the train and held-out prompts (fine-tuned minus base,
paired on the same noise), the quality ratio, the last rounds' KL bound, and the variance ratios of the
baselines averaged over rounds: V_φ's on the standardised reward, Var(r̃ − V)/Var(r̃), and the whole
baseline's on the raw reward, Var(r − (m + s·V))/Var(r) (m, s: the group or prompt statistics). A CI
resamples whole runs (seeds) and, within each run, the images of each prompt: it holds both the
seed-to-seed spread of training and the evaluation's sampling noise. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _deltas(run: dict, split: str, score: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image paired differences of ``split`` and the prompt index of each."""
    n = run["images_per_prompt"]
    splits = np.repeat(np.asarray(run["prompts"]["split"]), n)
    prompt_ids = np.repeat(np.arange(len(run["prompts"]["prompt"])), n)
    mask = splits == split
    delta = np.asarray(run["finetuned"][score])[mask] - np.asarray(run["base"][score])[mask]
    return delta, prompt_ids[mask]


def hierarchical_ci(runs: list[tuple[np.ndarray, np.ndarray]], n_resamples: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean over runs of each run's mean, with a bootstrap CI resampling runs, then images within prompts."""
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([values.mean() for values, _ in runs]))
    groups = [[values[strata == s] for s in np.unique(strata)] for values, strata in runs]
    means = np.empty(n_resamples)
    for i in range(n_resamples):
        picked = rng.integers(len(groups), size=len(groups))
        run_means = []
        for r in picked:
            run_means.append(np.mean(np.concatenate([g[rng.integers(len(g), size=len(g))] for g in groups[r]])))
        means[i] = np.mean(run_means)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return estimate, float(low), float(high)


def summarise(folder: Path) -> dict[str, dict]:
    arms: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("*_seed*.json")):
        run = json.loads(path.read_text())
        arms[run["name"]].append(run)
    table = {}
    for name, runs in arms.items():
        row = {"seeds": sorted(r["seed"] for r in runs), "rounds": float(np.mean([r["rounds"] for r in runs])),
               "train_seconds": float(np.mean([r["train_seconds"] for r in runs])), "overrides": runs[0]["overrides"]}
        for split in ("train", "heldout"):
            row[f"judge_{split}"] = hierarchical_ci([_deltas(r, split, "judge") for r in runs])
            row[f"judge_{split}_per_seed"] = [float(_deltas(r, split, "judge")[0].mean()) for r in runs]
            quality = [np.mean(r["finetuned"]["quality"]) / np.mean(r["base"]["quality"]) for r in runs]
            row["quality_ratio"] = float(np.mean(quality))
        tail = [h for r in runs for h in r["history"][-10:]]
        row["kl_bound_last10"] = float(np.nanmean([h["kl_bound_nats"] for h in tail]))
        for key in ("value_variance_ratio", "baseline_variance_ratio"):
            ratios = [h.get(key, float("nan")) for r in runs for h in r["history"]]
            row[key] = float(np.nanmean(ratios)) if np.isfinite(ratios).any() else float("nan")
        table[name] = row
    return table


def markdown(table: dict[str, dict]) -> str:
    lines = ["| arm | seeds | rounds | Δ judge train [95 % CI] | per seed | Δ judge held-out [95 % CI] | quality × | "
             "KL bound (last 10) | Var(r̃−V)/Var(r̃) | Var(r−b)/Var(r) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        train, heldout = row["judge_train"], row["judge_heldout"]
        lines.append(
            f"| {name} | {len(row['seeds'])} | {row['rounds']:.0f} | {train[0]:+.3f} [{train[1]:+.3f}, {train[2]:+.3f}] | "
            + ", ".join(f"{v:+.3f}" for v in row["judge_train_per_seed"])
            + f" | {heldout[0]:+.3f} [{heldout[1]:+.3f}, {heldout[2]:+.3f}] | {row['quality_ratio']:.3f} | "
            f"{row['kl_bound_last10']:.3g} | {row['value_variance_ratio']:.2f} | {row['baseline_variance_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    table = summarise(Path(args.folder))
    print(markdown(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
