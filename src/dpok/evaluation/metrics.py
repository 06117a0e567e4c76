"""Base vs fine-tuned score comparison: pair the two manifests and summarise with bootstrap CIs.

``comparison_metrics`` writes the structure of ``data/08_reporting/metrics.json`` (the file DVC reads
as metrics)::

    {"confidence": 0.95, "bootstrap_resamples": 2000, "n_images": 480, "n_prompts": 30,
     "scores": {"shapes_judge": "reward", "shapes_quality": "quality"},
     "all":                {"n": 480, "shapes_judge": {"base": {...}, "finetuned": {...}, "difference": {...}}, ...},
     "per_split":          {"train": {<as "all">}, "heldout": {...}},
     "per_split_category": {"train": {"color": {<as "all">}, ...}, ...}}

where each ``{...}`` is ``{"mean", "ci_low", "ci_high", "n"}`` and ``difference`` is fine-tuned minus
base over image pairs sharing prompt and seed. Every resample redraws seeds within each prompt (see
:mod:`dpok.evaluation.stats`); one generator per group, seeded by (bootstrap seed, group name), so a
group's intervals do not depend on which other groups exist.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dpok.evaluation.stats import bootstrap_mean_ci, paired_difference_ci

MODELS = ("base", "finetuned")
PAIR_KEY = ("prompt", "seed")


def pair_manifests(base: pd.DataFrame, finetuned: pd.DataFrame, score_names: Sequence[str]) -> pd.DataFrame:
    """One row per (prompt, seed) present in both manifests: prompt, category, split, seed and
    ``<score>_base`` / ``<score>_finetuned``. Raises when the two image sets do not match one to one."""
    for label, frame in (("base", base), ("fine-tuned", finetuned)):
        missing = [c for c in ("prompt", "category", "split", "seed", *score_names) if c not in frame.columns]
        if missing:
            raise ValueError(f"the {label} manifest lacks column(s) {missing}")
        duplicated = frame.duplicated(list(PAIR_KEY))
        if duplicated.any():
            row = frame[duplicated].iloc[0]
            raise ValueError(f"the {label} manifest has (prompt, seed) = ({row['prompt']!r}, {row['seed']}) twice")
    keys_base = set(zip(base["prompt"], base["seed"].astype(int)))
    keys_tuned = set(zip(finetuned["prompt"], finetuned["seed"].astype(int)))
    if keys_base != keys_tuned:
        only_base, only_tuned = sorted(keys_base - keys_tuned)[:3], sorted(keys_tuned - keys_base)[:3]
        raise ValueError(
            "base and fine-tuned manifests cover different (prompt, seed) pairs "
            f"(only base: {only_base}, only fine-tuned: {only_tuned}); rerun both pipelines with the same settings"
        )
    left = base[["prompt", "category", "split", "seed", *score_names]].copy()
    right = finetuned[["prompt", "seed", *score_names]].copy()
    left["seed"], right["seed"] = left["seed"].astype(int), right["seed"].astype(int)
    paired = left.merge(right, on=list(PAIR_KEY), suffixes=("_base", "_finetuned"), validate="one_to_one")
    return paired


def _group_seed(seed: int, group: str) -> list[int]:
    return [int(seed), zlib.crc32(group.encode("utf-8"))]


def summarise_pairs(group: pd.DataFrame, name: str, scores: Sequence[str], *, n_resamples: int, confidence: float,
                    seed: int) -> dict[str, Any]:
    """``{"n", "n_prompts", score: {"base", "finetuned", "difference"}}`` for a group of paired rows
    (``<score>_base`` / ``<score>_finetuned`` columns), the bootstrap seeded by (``seed``, ``name``)."""
    strata = group["prompt"].to_numpy()
    result: dict[str, Any] = {"n": int(len(group)), "n_prompts": int(group["prompt"].nunique())}
    for score in scores:
        base, tuned = group[f"{score}_base"].to_numpy(), group[f"{score}_finetuned"].to_numpy()
        # The same generator seed for the three intervals of a group: the same resamples, so the
        # difference's interval is the interval of the difference of the resampled means.
        kwargs = dict(n_resamples=n_resamples, confidence=confidence, seed=_group_seed(seed, name), strata=strata)
        result[score] = {
            "base": bootstrap_mean_ci(base, **kwargs).to_dict(),
            "finetuned": bootstrap_mean_ci(tuned, **kwargs).to_dict(),
            "difference": paired_difference_ci(tuned, base, **kwargs).to_dict(),
        }
    return result


def comparison_metrics(
    paired: pd.DataFrame,
    score_kinds: Mapping[str, str],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics.json structure (module docstring) from :func:`pair_manifests`'s table."""
    scores = list(score_kinds)
    kwargs = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
    metrics: dict[str, Any] = {
        "confidence": confidence,
        "bootstrap_resamples": n_resamples,
        "bootstrap_seed": seed,
        "n_images": int(len(paired)),
        "n_prompts": int(paired["prompt"].nunique()),
        "scores": dict(score_kinds),
        "all": summarise_pairs(paired, "all", scores, **kwargs),
        "per_split": {},
        "per_split_category": {},
    }
    for split, by_split in paired.groupby("split", sort=True):
        metrics["per_split"][str(split)] = summarise_pairs(by_split, f"split={split}", scores, **kwargs)
        metrics["per_split_category"][str(split)] = {
            str(category): summarise_pairs(group, f"split={split}/category={category}", scores, **kwargs)
            for category, group in by_split.groupby("category", sort=True)
        }
    return metrics


def per_prompt_differences(paired: pd.DataFrame, score: str) -> pd.DataFrame:
    """Per prompt: split, category, mean base and fine-tuned ``score`` and their difference, sorted by
    the difference (largest gain first)."""
    table = (
        paired.assign(difference=paired[f"{score}_finetuned"] - paired[f"{score}_base"])
        .groupby(["prompt", "split", "category"], sort=False)
        .agg(
            base=(f"{score}_base", "mean"),
            finetuned=(f"{score}_finetuned", "mean"),
            difference=("difference", "mean"),
        )
        .reset_index()
    )
    return table.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """The metrics as flat MLflow keys, e.g. ``eval.heldout.shapes_judge.difference.mean``."""
    flat: dict[str, float] = {}

    def add(path: str, block: Mapping[str, Any]) -> None:
        for score in metrics["scores"]:
            for model in (*MODELS, "difference"):
                for stat in ("mean", "ci_low", "ci_high"):
                    value = block[score][model][stat]
                    if value is not None and np.isfinite(value):
                        flat[f"{path}.{score}.{model}.{stat}"] = float(value)

    add(f"{prefix}.all", metrics["all"])
    for split, block in metrics["per_split"].items():
        add(f"{prefix}.{_key(split)}", block)
        for category, sub in metrics["per_split_category"][split].items():
            add(f"{prefix}.{_key(split)}.{_key(category)}", sub)
    return flat


def _key(text: str) -> str:
    """A string made safe for an MLflow metric name (letters, digits, _ - . / and spaces)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in str(text))
