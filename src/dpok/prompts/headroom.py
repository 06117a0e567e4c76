"""Choosing a training prompt set with headroom by a rule, not by outcome.

RL can only improve a prompt the base model solves *sometimes*: a prompt it never solves gives every
sample the same low reward (nothing to compare), one it always solves gives nothing to gain. The rule:

1. every candidate prompt is sampled from the base model on ``num_seeds`` fixed seeds (the evaluation
   sampler, on seeds *different* from the evaluation's, so the selection does not favour the very noise
   the evaluation later reuses);
2. its *exact-solve rate* is the share of samples whose alignment score is ≥ ``solved_threshold``;
3. candidates with a rate in ``[min_solve_rate, max_solve_rate]`` qualify;
4. within each category the qualifying prompts are ordered by a SHA-256 hash of their text (salted by
   ``hash_salt``), and the first ``train_per_category`` go to ``train``, the next
   ``heldout_per_category`` to ``heldout``; a category with one qualifying prompt puts it in ``train``
   and is reported, since it cannot be on both sides.

The same measurement chooses the default run's *many-prompt* training set from ShapesEval's training pool
(:func:`select_pool_prompts`): every pool prompt whose rate lies in ``select_prompts.pool``'s range (the pool's
``train`` prompts to ``train``, its ``validation`` prompts to ``heldout``; ShapesEval's test prompts never).

Nothing here looks at what fine-tuning later does with a prompt. Pure library code: the
``select_prompts`` pipeline measures the rates and calls :func:`select_headroom_prompts`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

from dpok.config import Settings


@dataclass(frozen=True)
class HeadroomRule(Settings):
    """The selection rule (``parameters_select_prompts.yml``, key ``select_prompts.rule``).

    Attributes:
        min_solve_rate: Lowest exact-solve rate a prompt may have to qualify.
        max_solve_rate: Highest exact-solve rate a prompt may have to qualify.
        solved_threshold: A sample counts as solved when its alignment score is at least this.
        train_per_category: Qualifying prompts per category put in ``train`` (hash order).
        heldout_per_category: The next ones per category put in ``heldout``.
        hash_salt: Salt of the hash that orders prompts; change it for a different, equally fair draw.
    """

    KEY_PATH: ClassVar[str] = "select_prompts.rule"

    min_solve_rate: float
    max_solve_rate: float
    solved_threshold: float
    train_per_category: int
    heldout_per_category: int
    hash_salt: str

    def __post_init__(self) -> None:
        for name in ("min_solve_rate", "max_solve_rate", "solved_threshold"):
            self.number(name, ge=0, le=1)
        if self.min_solve_rate > self.max_solve_rate:
            self.fail("min_solve_rate", f"<= {self.key('max_solve_rate')} ({self.max_solve_rate})")
        for name in ("train_per_category", "heldout_per_category"):
            self.integer(name, 1)
        if not isinstance(self.hash_salt, str):
            self.fail("hash_salt", "a string")



@dataclass(frozen=True)
class PoolRule(Settings):
    """Which ShapesEval training-pool prompts the default run trains on (``select_prompts.pool``).

    Attributes:
        min_solve_rate: Lowest exact-solve rate of a prompt kept (below it, every group of its samples is
            likely all-wrong: no comparison to learn from).
        max_solve_rate: Highest exact-solve rate kept (above it, nothing to gain).
    """

    KEY_PATH: ClassVar[str] = "select_prompts.pool"

    min_solve_rate: float
    max_solve_rate: float

    def __post_init__(self) -> None:
        for name in ("min_solve_rate", "max_solve_rate"):
            self.number(name, ge=0, le=1)
        if self.min_solve_rate > self.max_solve_rate:
            self.fail("min_solve_rate", f"<= {self.key('max_solve_rate')} ({self.max_solve_rate})")


@dataclass(frozen=True)
class SelectPromptsConfig(Settings):
    """All of ``select_prompts`` (``parameters_select_prompts.yml``).

    Attributes:
        num_seeds: Seeds each candidate prompt is sampled on.
        seed: Base seed of those (``derive_seeds(seed, num_seeds)``); not the evaluation's seed.
        score: The alignment score (``dpok.rewards`` registry name) a sample is solved by.
        rule: :class:`HeadroomRule`.
        pool: :class:`PoolRule`.
    """

    KEY_PATH: ClassVar[str] = "select_prompts"

    num_seeds: int
    seed: int
    score: str
    rule: HeadroomRule
    pool: PoolRule

    def __post_init__(self) -> None:
        self.integer("num_seeds", 1)
        self.integer("seed", 0)
        if not isinstance(self.score, str) or not self.score:
            self.fail("score", "a reward name")



def prompt_hash(prompt: str, salt: str) -> str:
    """The hex SHA-256 of ``salt`` and the prompt: a fixed, outcome-blind order of prompts."""
    return hashlib.sha256(f"{salt}\n{prompt}".encode()).hexdigest()


def solve_rates(scores: pd.DataFrame, solved_threshold: float) -> pd.DataFrame:
    """Per prompt: samples, exact-solve rate and mean score, from rows ``prompt, category, score``."""
    missing = {"prompt", "category", "score"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores need the columns prompt, category, score; missing {sorted(missing)}")
    solved = scores.assign(solved=scores["score"] >= solved_threshold - 1e-9)
    table = solved.groupby(["prompt", "category"], sort=False).agg(
        samples=("score", "size"), solve_rate=("solved", "mean"), mean_score=("score", "mean")
    )
    return table.reset_index()


def select_headroom_prompts(rates: pd.DataFrame, rule: HeadroomRule) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply the rule to ``rates`` (:func:`solve_rates`); returns the prompt table and a summary.

    The table has the columns ``prompt, category, split, base_solve_rate, base_mean_score`` (train rows
    first, then held out, each in category then hash order) and reads as a prompt file.
    """
    qualifies = rates["solve_rate"].between(rule.min_solve_rate, rule.max_solve_rate)
    rows, summary = [], {"rule": rule.__dict__, "candidates": int(len(rates)), "categories": {}}
    for category, group in rates.groupby("category", sort=True):
        picked = group[qualifies.loc[group.index]]
        order = sorted(picked.index, key=lambda i: prompt_hash(picked.at[i, "prompt"], rule.hash_salt))
        # Too few for both quotas: about half each way, so both sides still see the category.
        n_train = rule.train_per_category
        if len(order) < rule.train_per_category + rule.heldout_per_category:
            n_train = min(rule.train_per_category, (len(order) + 1) // 2)
        split_of = {index: "train" for index in order[:n_train]}
        split_of.update({index: "heldout" for index in order[n_train : n_train + rule.heldout_per_category]})
        for index, split in split_of.items():
            rows.append({
                "prompt": rates.at[index, "prompt"], "category": category, "split": split,
                "base_solve_rate": float(rates.at[index, "solve_rate"]),
                "base_mean_score": float(rates.at[index, "mean_score"]),
            })
        summary["categories"][category] = {
            "candidates": int(len(group)),
            "qualifying": int(len(order)),
            "train": sum(s == "train" for s in split_of.values()),
            "heldout": sum(s == "heldout" for s in split_of.values()),
        }
    table = pd.DataFrame(rows, columns=["prompt", "category", "split", "base_solve_rate", "base_mean_score"])
    table = table.sort_values("split", kind="stable", key=lambda s: s.map({"train": 0, "heldout": 1}))
    table = table.reset_index(drop=True)
    summary["one_sided_categories"] = [
        c for c, counts in summary["categories"].items() if counts["qualifying"] and not counts["heldout"]
    ]
    for split in ("train", "heldout"):
        part = table[table["split"] == split]
        summary[split] = {
            "prompts": int(len(part)),
            "base_solve_rate": float(part["base_solve_rate"].mean()) if len(part) else float("nan"),
            "base_mean_score": float(part["base_mean_score"].mean()) if len(part) else float("nan"),
        }
    return table, summary


def select_pool_prompts(rates: pd.DataFrame, split: pd.DataFrame, rule: PoolRule) -> pd.DataFrame:
    """ShapesEval's training pool cut to the prompts with signal: ``prompt, category, split, base_solve_rate,
    base_mean_score``, the pool's ``train`` rows as ``train`` and its ``validation`` rows as ``heldout`` (a
    prompt file); ShapesEval's ``test`` prompts are never in it.

    ``rates``: :func:`solve_rates` of every grammar prompt; ``split``: the checked ShapesEval table. A pool
    prompt without a measured rate is an error (the rates are stale: rerun ``select_prompts``).
    """
    pool = split[split["split"] != "test"]
    measured = rates.set_index("prompt")
    unmeasured = sorted(set(pool["prompt"]) - set(measured.index))
    if unmeasured:
        raise ValueError(
            f"{len(unmeasured)} ShapesEval pool prompt(s) have no measured solve rate ({unmeasured[:3]}): the rates "
            "predate the split; rerun `kedro run --pipelines select_prompts`"
        )
    rate = pool["prompt"].map(measured["solve_rate"])
    kept = pool[rate.between(rule.min_solve_rate, rule.max_solve_rate)]
    table = pd.DataFrame({
        "prompt": kept["prompt"].to_numpy(),
        "category": kept["category"].to_numpy(),
        "split": kept["split"].map({"train": "train", "validation": "heldout"}).to_numpy(),
        "base_solve_rate": kept["prompt"].map(measured["solve_rate"]).to_numpy(dtype=float),
        "base_mean_score": kept["prompt"].map(measured["mean_score"]).to_numpy(dtype=float),
    })
    order = table["split"].map({"train": 0, "heldout": 1})
    return table.assign(_order=order).sort_values(["_order", "category", "prompt"]).drop(columns="_order").reset_index(drop=True)


__all__ = ["HeadroomRule", "PoolRule", "prompt_hash", "select_headroom_prompts", "select_pool_prompts", "solve_rates"]
