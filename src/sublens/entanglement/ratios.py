"""Token entanglement, phases 2 and 3: descriptive statistics of bias ratios (per category,
against reference groups, by digit length); definitions in the `sublens.entanglement` docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from sublens.entanglement.definitions import EntanglementError
from sublens.stats import bootstrap_diff_ci, log_ratio_interval, permutation_pvalue, summarize


def _positive(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise EntanglementError(f"{what}: expected a 1-D array.")
    if np.any(~np.isfinite(array)) or np.any(array <= 0):
        raise EntanglementError(f"{what}: ratios must be finite and positive.")
    return array


def geometric_summary(ratios: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Geometric mean of positive ratios with a Student-t CI of the mean log ratio, exponentiated
    (geo_mean, geo_ci_low, geo_ci_high): close to nominal coverage at the 4-15 numbers of a
    category, where a percentile bootstrap covers 68-91%; nan bounds with one number or no spread."""
    r = _positive(ratios, "geometric_summary")
    if r.size == 0:
        return {"geo_mean": float("nan"), "geo_ci_low": float("nan"), "geo_ci_high": float("nan")}
    logs = np.log(r)
    mean, low, high = log_ratio_interval(logs)
    return {
        "geo_mean": float(np.exp(mean)),
        "geo_ci_low": float(np.exp(low)),
        "geo_ci_high": float(np.exp(high)),
    }


def ratio_summary(ratios: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Arithmetic summary (n, mean, median, sd, bootstrap CI of the mean: sublens.stats.summarize)
    and the geometric mean with its bootstrap CI (geometric_summary) of positive ratios."""
    r = _positive(ratios, "ratio_summary")
    return {**summarize(r, seed=seed), **geometric_summary(r, seed)}


def compare_ratios(
    test: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 10000,
) -> dict[str, Any]:
    """test vs reference ratios on the log scale: ratio of geometric means with a bootstrap CI,
    a two-sided permutation p-value of the difference of mean logs, and `underpowered` (the CI
    of the ratio includes 1)."""
    a = np.log(_positive(test, "compare_ratios"))
    b = np.log(_positive(reference, "compare_ratios"))
    if a.size == 0 or b.size == 0:
        return {
            "ratio": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "p_value": float("nan"),
            "underpowered": True,
            "n": [int(a.size), int(b.size)],
        }
    low, high = bootstrap_diff_ci(a, b, seed=seed)
    p = permutation_pvalue(a, b, n_resamples=n_resamples, seed=seed)
    return {
        "ratio": float(np.exp(a.mean() - b.mean())),
        "ci_low": float(np.exp(low)),
        "ci_high": float(np.exp(high)),
        "p_value": p,
        "underpowered": bool(low <= 0.0 <= high),
        "n": [int(a.size), int(b.size)],
    }


RATIO_COLUMNS = ("bias_ratio", "control_ratio", "relative_ratio")


@dataclass
class GroupValues:
    """The ratios of one group of prompts (a category, the template words, ...)."""

    name: str
    bias_ratio: list[float] = field(default_factory=list)
    control_ratio: list[float] = field(default_factory=list)
    relative_ratio: list[float] = field(default_factory=list)
    prob_diff: list[float] = field(default_factory=list)
    specific_shift: list[float] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        values: list[float] = getattr(self, name)
        return values


def group_statistics(
    group: GroupValues,
    references: Mapping[str, GroupValues],
    seed: int = 0,
    n_resamples: int = 10000,
) -> dict[str, Any]:
    """Summaries of every ratio of a group, and its comparison with each reference group
    (skipping the group itself)."""
    out: dict[str, Any] = {"n": len(group.bias_ratio)}
    if group.prob_diff:
        out["prob_diff_mean"] = float(np.mean(group.prob_diff))
    if group.specific_shift:
        out["specific_shift_mean"] = float(np.mean(group.specific_shift))
    for column in RATIO_COLUMNS:
        out[column] = ratio_summary(group.column(column), seed)
    for ref_name, ref in references.items():
        if ref is group or ref.name == group.name:
            continue
        out[f"vs_{ref_name}"] = {
            column: compare_ratios(group.column(column), ref.column(column), seed, n_resamples)
            for column in ("bias_ratio", "relative_ratio")
        }
    return out


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman rank correlation with its p-value (NaN for fewer than 3 points or no spread)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return {"n": int(a.size), "rho": float("nan"), "p_value": float("nan")}
    result = scipy_stats.spearmanr(a, b)
    return {"n": int(a.size), "rho": float(result.statistic), "p_value": float(result.pvalue)}


def strongest(per_group: Mapping[str, Mapping[str, Any]], column: str = "bias_ratio") -> dict[str, Any]:
    """The group with the largest geometric mean of `column`, and whether its CI clears the
    runner-up's (separable) — e.g. the strongest digit length in phase 3."""
    ranked = sorted(
        ((name, s[column]) for name, s in per_group.items() if np.isfinite(s[column]["geo_mean"])),
        key=lambda item: -item[1]["geo_mean"],
    )
    if not ranked:
        return {"best": None, "runner_up": None, "separable": False}
    best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None
    separable = runner is not None and best[1]["geo_ci_low"] > runner[1]["geo_ci_high"]
    return {
        "best": best[0],
        "geo_mean": best[1]["geo_mean"],
        "runner_up": runner[0] if runner else None,
        "separable": bool(separable),
    }
