"""The paper's three claims, checked on experiment results (docs/results.md, ``scripts/paper_claims.py``).

Inputs are plain tables, so the verdict logic can be tested on synthetic results:

- ``per_prompt``: one row per (arm, seed, prompt): ``arm``, ``seed``, ``prompt``, ``split``, and the mean
  over the evaluation's fixed image seeds of ``judge_base``, ``judge_tuned``, ``quality_base``,
  ``quality_tuned`` (base and fine-tuned sampled from the same noise).
- ``kl``: one row per (arm, seed): ``kl_bound_nats``, the exact KL bound at the end of the run.
- ``training``: one row per (arm, seed, round): ``trajectories`` (sampled so far) and ``reward`` (that
  round's mean training reward). DPOK arms only.

Every interval is a percentile bootstrap that resamples the runs (seeds) and, within each run, the
prompts (or rounds), so it carries both the seed-to-seed spread and the prompt-to-prompt spread. A
difference between arms resamples each arm independently. A claim *holds* when its interval lies on the
claimed side of zero, *does not hold* when it lies on the other side, and is *inconclusive* otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

ARMS = ("sft", "rl", "rl_kl", "rl_kl_v")
ARM_LABELS = {
    "sft": "SFT (reward-weighted, supervised KL)",
    "rl": "RL, no KL, no value function",
    "rl_kl": "RL + KL",
    "rl_kl_v": "RL + KL + value function (DPOK, the default)",
}
QUALITY_KEPT = 0.95  # fine-tuned quality at least this fraction of the base model's counts as kept
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high}

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _bootstrap_means(runs: list[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` two-level resamples: runs with replacement, then values within each run."""
    out = np.empty(resamples)
    for b in range(resamples):
        picked = rng.integers(len(runs), size=len(runs))
        out[b] = np.mean([runs[i][rng.integers(len(runs[i]), size=len(runs[i]))].mean() for i in picked])
    return out


def _runs(table: pd.DataFrame, column: str, by: str = "seed") -> list[np.ndarray]:
    return [group[column].to_numpy(dtype=float) for _, group in table.groupby(by, sort=True)]


def interval(runs: list[np.ndarray], resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """Mean over runs of each run's mean, with the two-level bootstrap interval."""
    if not runs or any(len(r) == 0 for r in runs):
        raise ValueError("interval needs at least one run, each with at least one value")
    means = _bootstrap_means(runs, resamples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2 * 100
    return Interval(float(np.mean([r.mean() for r in runs])), *np.percentile(means, [tail, 100 - tail]))


def difference(a: list[np.ndarray], b: list[np.ndarray], resamples: int = 2000, seed: int = 0,
               confidence: float = 0.95) -> Interval:
    """mean(a) − mean(b), each resampled on its own (independent runs)."""
    rng = np.random.default_rng(seed)
    draws = _bootstrap_means(a, resamples, rng) - _bootstrap_means(b, resamples, rng)
    tail = (1 - confidence) / 2 * 100
    point = np.mean([r.mean() for r in a]) - np.mean([r.mean() for r in b])
    return Interval(float(point), *np.percentile(draws, [tail, 100 - tail]))


def _with_deltas(per_prompt: pd.DataFrame) -> pd.DataFrame:
    table = per_prompt.copy()
    table["judge_delta"] = table["judge_tuned"] - table["judge_base"]
    table["quality_ratio"] = table["quality_tuned"] / table["quality_base"]
    return table


def arm_table(per_prompt: pd.DataFrame, kl: pd.DataFrame, split: str = "train", resamples: int = 2000) -> pd.DataFrame:
    """Table-1 style: per arm, judge and quality base → fine-tuned with intervals, and the KL bound."""
    table = _with_deltas(per_prompt[per_prompt["split"] == split])
    rows = []
    for arm in [a for a in ARMS if a in set(table["arm"])] + sorted(set(table["arm"]) - set(ARMS)):
        part = table[table["arm"] == arm]
        bounds = kl.loc[kl["arm"] == arm, "kl_bound_nats"].to_numpy(dtype=float)
        rows.append({
            "arm": arm,
            "seeds": part["seed"].nunique(),
            "prompts": part["prompt"].nunique(),
            "judge_base": interval(_runs(part, "judge_base"), resamples),
            "judge_tuned": interval(_runs(part, "judge_tuned"), resamples),
            "judge_delta": interval(_runs(part, "judge_delta"), resamples),
            "quality_base": interval(_runs(part, "quality_base"), resamples),
            "quality_tuned": interval(_runs(part, "quality_tuned"), resamples),
            "quality_ratio": interval(_runs(part, "quality_ratio"), resamples),
            "kl_bound_nats": float(np.mean(bounds)) if bounds.size else float("nan"),
            "kl_bound_range": (float(bounds.min()), float(bounds.max())) if bounds.size else (float("nan"),) * 2,
        })
    return pd.DataFrame(rows).set_index("arm")


def _side(diff: Interval) -> str:
    return HOLDS if diff.low > 0 else FAILS if diff.high < 0 else INCONCLUSIVE


def _missing(arms: set[str], *needed: str) -> str | None:
    absent = [a for a in needed if a not in arms]
    return f"not run yet: {', '.join(absent)}" if absent else None


def claim_rl_beats_sft(per_prompt: pd.DataFrame, split: str = "train", resamples: int = 2000) -> dict:
    """Claim 1: online RL with KL (DPOK) aligns better than SFT and keeps image quality."""
    statement = ("Online RL with KL (DPOK, arm rl_kl_v) improves alignment more than reward-weighted SFT, "
                 f"keeping quality (fine-tuned quality ≥ {QUALITY_KEPT:g} × base)")
    table = _with_deltas(per_prompt[per_prompt["split"] == split])
    if (why := _missing(set(table["arm"]), "rl_kl_v", "sft")) is not None:
        return {"claim": 1, "statement": statement, "verdict": INCONCLUSIVE, "evidence": why}
    rl, sft = table[table["arm"] == "rl_kl_v"], table[table["arm"] == "sft"]
    gain = difference(_runs(rl, "judge_delta"), _runs(sft, "judge_delta"), resamples)
    quality = interval(_runs(rl, "quality_ratio"), resamples)
    verdict = _side(gain)
    if verdict == HOLDS and quality.high < QUALITY_KEPT:
        verdict = FAILS
    elif verdict == HOLDS and quality.mean < QUALITY_KEPT:
        verdict = INCONCLUSIVE
    return {
        "claim": 1, "statement": statement, "verdict": verdict,
        "evidence": f"Δ judge DPOK − Δ judge SFT {gain}; DPOK quality × base {quality.mean:.3f} "
                    f"[{quality.low:.3f}, {quality.high:.3f}]",
        "judge_gain_over_sft": gain.as_dict(), "dpok_quality_ratio": quality.as_dict(),
    }


def claim_kl_prevents_overoptimisation(per_prompt: pd.DataFrame, kl: pd.DataFrame, split: str = "train",
                                       resamples: int = 2000) -> dict:
    """Claim 2: without the KL term the model drifts further and loses quality (over-optimisation)."""
    statement = ("The KL regulariser prevents over-optimisation: RL + KL keeps quality better than RL "
                 "without KL, and stays closer to the base model (smaller KL bound)")
    table = _with_deltas(per_prompt[per_prompt["split"] == split])
    if (why := _missing(set(table["arm"]), "rl", "rl_kl")) is not None:
        return {"claim": 2, "statement": statement, "verdict": INCONCLUSIVE, "evidence": why}
    with_kl, without = table[table["arm"] == "rl_kl"], table[table["arm"] == "rl"]
    kept = difference(_runs(with_kl, "quality_ratio"), _runs(without, "quality_ratio"), resamples)
    drift = {arm: kl.loc[kl["arm"] == arm, "kl_bound_nats"].to_numpy(dtype=float) for arm in ("rl", "rl_kl")}
    no_kl_quality = interval(_runs(without, "quality_ratio"), resamples)
    verdict = _side(kept)
    if verdict == HOLDS and not drift["rl"].mean() > drift["rl_kl"].mean():
        verdict = INCONCLUSIVE
    evidence = (f"quality × base, with KL − without {kept}; without KL quality × base {no_kl_quality.mean:.3f} "
                f"[{no_kl_quality.low:.3f}, {no_kl_quality.high:.3f}]; KL bound without {drift['rl'].mean():.0f} "
                f"nats, with {drift['rl_kl'].mean():.0f} nats")
    if verdict == INCONCLUSIVE and no_kl_quality.low <= 1 <= no_kl_quality.high:
        evidence += " (no over-optimisation to prevent at this budget: the no-KL arm's quality did not drop)"
    return {"claim": 2, "statement": statement, "verdict": verdict, "evidence": evidence,
            "quality_kept_by_kl": kept.as_dict(),
            "kl_bound_nats": {arm: float(v.mean()) for arm, v in drift.items()}}


def claim_value_function_is_sample_efficient(training: pd.DataFrame, resamples: int = 2000) -> dict:
    """Claim 3 (the paper's Figure 7): with the value function the training reward rises faster for the same
    number of sampled trajectories (compared by the mean training reward over the run, the area under the
    curve per trajectory)."""
    statement = ("Value learning reaches a given training reward with fewer samples (multi-prompt; mean "
                 "training reward over the run, RL + KL + value − RL + KL)")
    if (why := _missing(set(training["arm"]), "rl_kl_v", "rl_kl")) is not None:
        return {"claim": 3, "statement": statement, "verdict": INCONCLUSIVE, "evidence": why}
    with_v, without = training[training["arm"] == "rl_kl_v"], training[training["arm"] == "rl_kl"]
    gain = difference(_runs(with_v, "reward"), _runs(without, "reward"), resamples)
    return {"claim": 3, "statement": statement, "verdict": _side(gain),
            "evidence": f"mean training reward, with − without value function {gain}",
            "training_reward_gain": gain.as_dict()}


def claims(per_prompt: pd.DataFrame, kl: pd.DataFrame, training: pd.DataFrame, split: str = "train",
           resamples: int = 2000) -> list[dict]:
    return [
        claim_rl_beats_sft(per_prompt, split, resamples),
        claim_kl_prevents_overoptimisation(per_prompt, kl, split, resamples),
        claim_value_function_is_sample_efficient(training, resamples),
    ]


def training_curves(training: pd.DataFrame, base_reward: float | None = None, window: int = 5) -> Image.Image:
    """Figure-7 style: training reward against trajectories sampled (running mean over ``window`` rounds),
    mean over seeds with a min–max band, one line per DPOK arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for arm in [a for a in ARMS if a in set(training["arm"])]:
        runs = []
        for _, run in training[training["arm"] == arm].groupby("seed"):
            run = run.sort_values("trajectories")
            runs.append(run.set_index("trajectories")["reward"].rolling(window, min_periods=1).mean())
        curves = pd.concat(runs, axis=1).dropna()
        x = curves.index.to_numpy()
        axis.plot(x, curves.mean(axis=1), label=f"{ARM_LABELS[arm]} ({curves.shape[1]} seeds)")
        axis.fill_between(x, curves.min(axis=1), curves.max(axis=1), alpha=0.18)
    if base_reward is not None:
        axis.axhline(base_reward, color="grey", linestyle="--", linewidth=1, label="base model (SFT's samples)")
    axis.set_xlabel("trajectories sampled")
    axis.set_ylabel(f"training reward (running mean of {window} rounds)")
    axis.set_title("Training reward against samples (band: min–max over seeds)")
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.canvas.draw()
    image = Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba()).convert("RGB")
    plt.close(figure)
    return image


def results_markdown(table: pd.DataFrame, verdicts: list[dict], heldout: pd.DataFrame | None = None,
                     intro: str = "", figures: tuple[tuple[str, str], ...] = ()) -> str:
    """docs/results.md: the claims with verdicts, the table, the figures."""
    lines = ["# Does it reproduce the paper? DPOK's claims on the shapes world", ""]
    if intro:
        lines += [intro, ""]
    lines += ["## The claims", "", "| # | claim | verdict | evidence |", "|---|---|---|---|"]
    lines += [f"| {v['claim']} | {v['statement']} | **{v['verdict']}** | {v['evidence']} |" for v in verdicts]
    for title, part in (("training prompts", table), ("held-out prompts", heldout)):
        if part is None or part.empty:
            continue
        lines += ["", f"## Alignment and quality, {title}", "",
                  "Mean over seeds and prompts, 95 % bootstrap CI (runs, then prompts within a run). Judge: exact "
                  "alignment score; quality: the world's prompt-free quality score; KL bound: the exact bound "
                  "(nats) at the end of the run, mean over seeds (range).", "",
                  "| arm | seeds | judge base → fine-tuned | Δ judge | quality base → fine-tuned | quality × base | KL bound (nats) |",
                  "|---|---|---|---|---|---|---|"]
        for arm, row in part.iterrows():
            lo, hi = row["kl_bound_range"]
            lines.append(
                f"| {ARM_LABELS.get(arm, arm)} | {row['seeds']} | {row['judge_base'].mean:.3f} → "
                f"{row['judge_tuned'].mean:.3f} | {row['judge_delta']} | {row['quality_base'].mean:.3f} → "
                f"{row['quality_tuned'].mean:.3f} | {row['quality_ratio'].mean:.3f} "
                f"[{row['quality_ratio'].low:.3f}, {row['quality_ratio'].high:.3f}] | "
                f"{row['kl_bound_nats']:.0f} ({lo:.0f}–{hi:.0f}) |"
            )
    for caption, path in figures:
        lines += ["", f"![{caption}]({path})", "", caption]
    return "\n".join(lines) + "\n"


__all__ = [
    "ARMS", "ARM_LABELS", "FAILS", "HOLDS", "INCONCLUSIVE", "Interval", "arm_table", "claim_kl_prevents_overoptimisation",
    "claim_rl_beats_sft", "claim_value_function_is_sample_efficient", "claims", "difference", "interval",
    "results_markdown", "training_curves",
]
