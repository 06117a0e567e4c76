"""Bootstrap and binomial intervals against direct computations."""

import math

import numpy as np
import pytest
from scipy.stats import beta, norm

from dpok.evaluation import binomial_ci, bootstrap_mean_ci, paired_difference_ci
from dpok.evaluation.stats import bootstrap_means


def test_bootstrap_matches_a_direct_loop_with_the_same_generator():
    x = np.random.default_rng(1).normal(size=37)
    vectorised = bootstrap_means(x, n_resamples=300, rng=np.random.default_rng(5))
    rng = np.random.default_rng(5)
    direct = np.array([x[rng.integers(0, x.size, size=x.size)].mean() for _ in range(300)])
    np.testing.assert_allclose(vectorised, direct)
    interval = bootstrap_mean_ci(x, n_resamples=300, seed=5, confidence=0.9)
    assert interval.estimate == pytest.approx(x.mean())
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(direct, [0.05, 0.95])))


def test_bootstrap_is_reproducible_and_chunking_does_not_change_it(monkeypatch):
    x = np.random.default_rng(2).normal(size=50)
    a = bootstrap_mean_ci(x, n_resamples=400, seed=3)
    assert a == bootstrap_mean_ci(x, n_resamples=400, seed=3)
    import dpok.evaluation.stats as stats

    monkeypatch.setattr(stats, "_MAX_DRAWS_PER_CHUNK", 50 * 7)  # 7 resamples per chunk
    assert stats.bootstrap_mean_ci(x, n_resamples=400, seed=3) == a


def test_bootstrap_ci_agrees_with_the_normal_approximation():
    x = np.random.default_rng(4).exponential(size=400)
    interval = bootstrap_mean_ci(x, n_resamples=20000, seed=0)
    half = norm.ppf(0.975) * x.std(ddof=0) / math.sqrt(x.size)
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.06)
    assert (interval.low + interval.high) / 2 == pytest.approx(x.mean(), abs=0.15 * half)


def test_stratified_bootstrap_has_the_stratified_variance():
    rng = np.random.default_rng(0)
    # Two prompts with very different means: an i.i.d. bootstrap would add the between-prompt spread.
    x = np.concatenate([rng.normal(0, 1, 60), rng.normal(10, 2, 40)])
    strata = np.array(["a"] * 60 + ["b"] * 40)
    means = bootstrap_means(x, n_resamples=20000, rng=np.random.default_rng(1), strata=strata)
    expected_sd = math.sqrt(60 * x[:60].var() + 40 * x[60:].var()) / 100
    assert means.std() == pytest.approx(expected_sd, rel=0.03)
    iid_sd = bootstrap_means(x, n_resamples=5000, rng=np.random.default_rng(1)).std()
    assert iid_sd > 2 * expected_sd


def test_paired_difference_is_the_bootstrap_of_the_differences_and_narrower_than_unpaired():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 200)
    tuned = base + 0.1 + rng.normal(0, 0.1, 200)
    paired = paired_difference_ci(tuned, base, n_resamples=2000, seed=9)
    direct = bootstrap_mean_ci(tuned - base, n_resamples=2000, seed=9)
    assert paired == direct
    assert paired.low > 0  # the shift is detected because the pairs share noise
    unpaired_half = 1.96 * math.sqrt(tuned.var() / 200 + base.var() / 200)
    assert (paired.high - paired.low) < unpaired_half
    with pytest.raises(ValueError, match="equal shapes"):
        paired_difference_ci(tuned, base[:-1])


@pytest.mark.parametrize("k, n", [(0, 10), (7, 20), (20, 20), (130, 200)])
def test_wilson_interval_matches_the_formula(k, n):
    z = norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    interval = binomial_ci(k, n)
    assert interval.estimate == pytest.approx(p)
    assert (interval.low, interval.high) == pytest.approx((max(centre - half, 0), min(centre + half, 1)))


@pytest.mark.parametrize("k, n", [(1, 10), (7, 20), (19, 20)])
def test_exact_interval_matches_clopper_pearson(k, n):
    interval = binomial_ci(k, n, method="exact")
    assert interval.low == pytest.approx(beta.ppf(0.025, k, n - k + 1))
    assert interval.high == pytest.approx(beta.ppf(0.975, k + 1, n - k))


def test_degenerate_and_bad_inputs():
    assert math.isnan(binomial_ci(0, 0).estimate)
    one = bootstrap_mean_ci([3.0], n_resamples=100)
    assert (one.estimate, one.low, one.high) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        binomial_ci(5, 3)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci([1.0, 2.0], confidence=95)
