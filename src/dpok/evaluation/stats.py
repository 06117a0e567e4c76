"""Confidence intervals: bootstrap means (optionally stratified), paired differences, binomial rates.

The bootstrap is the percentile bootstrap, vectorised over resamples with a seeded
``numpy.random.Generator`` (same seed, same interval). With ``strata`` (the prompt of each image)
every resample redraws the images *within* each prompt, keeping each prompt's weight fixed: the
interval is then about the sampling noise for this prompt set, which is what an evaluation on a fixed
prompt list measures. Base and fine-tuned images share prompt and seed, so their difference is
computed per image pair and bootstrapped as one sample (a paired interval, much narrower than two
independent ones when the two models' scores are correlated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Resamples × images held at once; larger problems are bootstrapped in chunks of resamples.
_MAX_DRAWS_PER_CHUNK = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float
    n: int

    def to_dict(self, name: str = "mean") -> dict[str, float | int]:
        return {name: self.estimate, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def bootstrap_means(
    values: Any,
    *,
    n_resamples: int,
    rng: np.random.Generator,
    strata: Any = None,
) -> np.ndarray:
    """The means of ``n_resamples`` bootstrap resamples of ``values`` (``(n_resamples,)``).

    Without ``strata`` each resample draws n values with replacement (``rng.integers(0, n, (B, n))``);
    with ``strata`` the values of each stratum (in sorted stratum order) are redrawn within it.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D array of values, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("bootstrap values must be finite (no NaN/inf)")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = x.size
    if strata is None:
        groups = [np.arange(n)]
    else:
        labels = np.asarray(strata)
        if labels.shape != (n,):
            raise ValueError(f"strata must give one label per value: {labels.shape} vs ({n},)")
        _, codes = np.unique(labels, return_inverse=True)
        groups = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        totals = np.zeros(size)
        for members in groups:
            draws = rng.integers(0, members.size, size=(size, members.size))
            totals += x[members][draws].sum(axis=1)
        means[start : start + size] = totals / n
    return means


def bootstrap_mean_ci(
    values: Any,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | Any = 0,
    strata: Any = None,
) -> Interval:
    """The mean of ``values`` with its percentile-bootstrap confidence interval.

    ``seed`` is anything ``numpy.random.default_rng`` takes (an int, a list of ints, a Generator).
    """
    confidence = _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    means = bootstrap_means(x, n_resamples=n_resamples, rng=rng, strata=strata)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(x.mean()), float(low), float(high), int(x.size))


def paired_difference_ci(
    treated: Any,
    control: Any,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | Any = 0,
    strata: Any = None,
) -> Interval:
    """Mean of ``treated - control`` (element-wise pairs) with its bootstrap CI."""
    t = np.asarray(treated, dtype=np.float64)
    c = np.asarray(control, dtype=np.float64)
    if t.shape != c.shape:
        raise ValueError(f"paired samples need equal shapes, got {t.shape} and {c.shape}")
    return bootstrap_mean_ci(t - c, n_resamples=n_resamples, confidence=confidence, seed=seed, strata=strata)


def binomial_ci(successes: int, trials: int, *, confidence: float = 0.95, method: str = "wilson") -> Interval:
    """The rate ``successes / trials`` with a binomial CI: ``wilson`` (score interval) or ``exact``
    (Clopper–Pearson), computed by ``scipy.stats.binomtest``. With no trials the rate and the bounds
    are NaN."""
    from scipy.stats import binomtest

    confidence = _check_confidence(confidence)
    if method not in ("wilson", "exact"):
        raise ValueError(f"method must be 'wilson' or 'exact', got {method!r}")
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method=method)
    return Interval(successes / trials, float(ci.low), float(ci.high), int(trials))
