"""Uncertainty for every number sublens reports: BCa bootstrap and Student-t CIs, permutation
tests, Wilson CIs, Holm-adjusted families (sublens.claims).

Thin wrappers over scipy.stats, with fixed seeds so the same data always gives the same
interval, and small dict summaries that go straight into results.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

Statistic = Callable[..., Any]


def _array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError("expected a 1-D sample")
    return array


MIN_INTERVAL_N = 5  # below this many values no bootstrap interval is given ("too few")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    level: float = 0.95,
    n_resamples: int = 5000,
    seed: int = 0,
) -> tuple[float, float]:
    """BCa bootstrap CI of `statistic` over one sample; (nan, nan) below MIN_INTERVAL_N values
    or when every value is equal: a zero-width interval is never a result.

    BCa, not percentile: the percentile bootstrap of a mean covers ~68-91% at n = 2-15
    (tests/unit/test_coverage.py); BCa corrects its bias and skew. For means of log ratios over
    few units prefer `log_ratio_interval` (Student t), which is exact for normal log ratios."""
    array = _array(values)
    if array.size < MIN_INTERVAL_N or np.all(array == array[0]):
        return (float("nan"), float("nan"))
    # numpy reductions take `axis`: scipy then resamples in one vectorized call (~50x faster).
    vectorized = statistic in (np.mean, np.median)
    result = stats.bootstrap(
        (array,),
        statistic,
        confidence_level=level,
        n_resamples=n_resamples,
        method="BCa",
        random_state=np.random.default_rng(seed),
        vectorized=vectorized,
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa degenerates on near-constant data
        return (float("nan"), float("nan"))
    return low, high


def log_ratio_interval(
    log_values: Sequence[float] | np.ndarray, level: float = 0.95, min_n: int = 2
) -> tuple[float, float, float]:
    """(mean, low, high) of per-unit log ratios: Student-t interval on the log scale, the
    interval the verdicts rest on (sublens.claims). nan bounds below `min_n` units or with no
    spread ("too few")."""
    array = _array(log_values)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(array.mean())
    if array.size < max(2, min_n) or np.all(array == array[0]):
        return mean, float("nan"), float("nan")
    return t_interval(array, level)


def summarize(
    values: Sequence[float] | np.ndarray,
    level: float = 0.95,
    seed: int = 0,
    n_resamples: int = 5000,
    method: Literal["t", "bca"] = "t",
) -> dict[str, Any]:
    """n, mean, median, sd and a CI of the mean: Student t by default (95% coverage for
    near-normal values, ~92% for strongly skewed ones at 25 values, where BCa gives ~91%:
    tests/unit/test_claims.py), BCa bootstrap on request (seed and n_resamples apply to it).
    No interval below MIN_INTERVAL_N values or without spread."""
    array = _array(values)
    if method == "bca":
        low, high = bootstrap_ci(array, np.mean, level, n_resamples, seed)
    elif array.size < MIN_INTERVAL_N:
        low, high = float("nan"), float("nan")
    else:
        _, low, high = t_interval(array, level)
    return {
        "n": int(array.size),
        "mean": float(array.mean()) if array.size else float("nan"),
        "median": float(np.median(array)) if array.size else float("nan"),
        "sd": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "ci_low": low,
        "ci_high": high,
        "ci": ("BCa bootstrap" if method == "bca" else "Student t")
        if math.isfinite(low)
        else f"none (too few: {array.size} values or no spread)",
    }


def permutation_pvalue(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    statistic: Statistic | None = None,
    n_resamples: int = 10000,
    seed: int = 0,
    alternative: str = "two-sided",
) -> float:
    """Permutation test of a difference between two independent samples (default: of means);
    NaN (too few to test) when either sample has fewer than two values."""
    x, y = _array(a), _array(b)
    if x.size < 2 or y.size < 2:  # scipy refuses a one-value sample; a data set can filter down to one
        return float("nan")

    def diff_of_means(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    result = stats.permutation_test(
        (x, y),
        statistic or diff_of_means,
        permutation_type="independent",
        n_resamples=n_resamples,
        alternative=alternative,
        random_state=np.random.default_rng(seed),
        vectorized=statistic is None,
    )
    return float(result.pvalue)


def paired_sign_flip_pvalue(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided permutation test of mean(a - b) over paired units (a question under two
    models): under no difference the two values of a pair are exchangeable, so the labels are
    swapped within pairs (every sign of the differences flipped; exact up to 13 pairs, Monte
    Carlo above). A unit's repeated samples stay inside it, so they are never counted as
    independent. NaN below two pairs; 1.0 when every difference is zero."""
    x, y = _array(a), _array(b)
    if x.size != y.size:
        raise ValueError("paired samples must have the same length")
    if x.size < 2:
        return float("nan")
    if np.all(x == y):
        return 1.0

    def mean_difference(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(u - v, axis=axis)

    result = stats.permutation_test(
        (x, y),
        mean_difference,
        permutation_type="samples",
        n_resamples=n_resamples,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(result.pvalue)


def bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    level: float = 0.95,
    n_resamples: int = 5000,
    seed: int = 0,
) -> tuple[float, float]:
    """BCa bootstrap CI of mean(a) - mean(b), resampling each independent sample; (nan, nan)
    below MIN_INTERVAL_N values per sample."""
    x, y = _array(a), _array(b)
    if min(x.size, y.size) < MIN_INTERVAL_N or (np.all(x == x[0]) and np.all(y == y[0])):
        return (float("nan"), float("nan"))
    result = stats.bootstrap(
        (x, y),
        lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        confidence_level=level,
        n_resamples=n_resamples,
        method="BCa",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return (float("nan"), float("nan"))
    return low, high


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t CI of the mean of independent values (seeds, questions);
    (mean, nan, nan) with fewer than two or when all are equal (never a zero-width interval)."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if array.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(array.mean())
    if array.size < 2 or np.all(array == array[0]):
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return mean, mean - half, mean + half


def wilson_ci(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (good coverage at small n and rates near 0)."""
    if trials == 0:
        return (float("nan"), float("nan"))
    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def two_proportion_pvalue(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test of two rates (answer rates of two models)."""
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    return float(stats.fisher_exact(table).pvalue)


def underpowered(ci: tuple[float, float]) -> bool:
    """True when the CI of a difference includes zero or is missing: the comparison cannot
    tell them apart."""
    if not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
        return True
    return bool(ci[0] <= 0.0 <= ci[1])


def cramers_v_interval(chi2: float, dof: int, n: int, smaller_side: int, level: float = 0.95) -> tuple[float, float]:
    """A confidence interval for the population Cramér's V of a contingency table, by inverting
    the noncentral chi-square distribution of the statistic (Smithson 2003): the noncentrality
    λ = n·φ² whose upper (lower) tail puts the observed χ² at (1 - level)/2, mapped to
    V = sqrt(λ / (n·(smaller_side - 1))). A bound is 0 where even λ = 0 cannot reach that tail
    (the lower bound of a table with no significant dependence). Asymptotic: its coverage at
    the sizes used is checked by simulation in tests/unit/test_mechanistic.py (0.90-0.98 from 20
    to 200 numbers; below 0.95 for large dependences)."""
    from scipy.optimize import brentq

    tail = (1 - level) / 2
    scale = n * (smaller_side - 1)

    def lam(target_sf: float) -> float:
        # ncx2.sf(chi2, dof, λ) rises with λ; 0 when the central distribution already exceeds it
        if stats.chi2.sf(chi2, dof) >= target_sf:
            return 0.0
        high = max(10.0, 2 * chi2)
        while stats.ncx2.sf(chi2, dof, high) < target_sf:
            high *= 2
        return float(brentq(lambda x: stats.ncx2.sf(chi2, dof, x) - target_sf, 0.0, high, xtol=1e-10))

    low, high = lam(tail), lam(1 - tail)
    return math.sqrt(low / scale), min(1.0, math.sqrt(high / scale))
