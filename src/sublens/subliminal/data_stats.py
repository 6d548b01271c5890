"""Data-level statistics of kept number answers: per-answer features (``FEATURES``: numbers per
answer, digits per number, copy rate of the prompt's numbers, increasing steps, mean value), the
distributions of one data set (``number_stats``), and how one teacher's numbers differ from
another's, with permutation tests over answers (``compare_number_stats``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from sublens.number_data import MAX_NUMBERS
from sublens.stats import permutation_pvalue, summarize


# ---- data-level statistics -------------------------------------------------------------------
def _answer_features(record: dict[str, Any]) -> dict[str, float]:
    numbers = [int(x) for x in record["numbers"]]
    seeds = {int(x) for x in record.get("seed_numbers", [])}
    steps = list(pairwise(numbers))
    return {
        "n_numbers": float(len(numbers)),
        "digits_per_number": float(np.mean([len(str(x)) for x in numbers])),
        "copy_fraction": float(np.mean([x in seeds for x in numbers])),
        "copies_any": float(any(x in seeds for x in numbers)),
        "increasing_fraction": float(np.mean([b > a for a, b in steps])) if steps else float("nan"),
        "mean_value": float(np.mean(numbers)),
    }


FEATURES = ("n_numbers", "digits_per_number", "copy_fraction", "copies_any", "increasing_fraction", "mean_value")


def _digit_counts(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """[answer, 10] how often each digit occurs in each answer's numbers."""
    out = np.zeros((len(records), 10))
    for i, r in enumerate(records):
        for x in r["numbers"]:
            for ch in str(int(x)):
                out[i, int(ch)] += 1
    return out


def number_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Distributions of one data set's kept numbers."""
    if not records:
        return {"n_answers": 0}
    features = [_answer_features(r) for r in records]
    digits = _digit_counts(records).sum(axis=0)
    widths = Counter(len(str(int(x))) for r in records for x in r["numbers"])
    lengths = Counter(len(r["numbers"]) for r in records)
    return {
        "n_answers": len(records),
        "n_numbers": int(sum(len(r["numbers"]) for r in records)),
        "features": {f: summarize([x[f] for x in features if not math.isnan(x[f])]) for f in FEATURES},
        "digit_distribution": (digits / digits.sum()).tolist(),
        "numbers_per_answer": {str(k): lengths[k] / len(records) for k in sorted(lengths)},
        "digits_per_number_distribution": {str(k): widths[k] / sum(widths.values()) for k in sorted(widths)},
        "separators": dict(Counter(repr(r.get("separator")) for r in records).most_common()),
        "brackets": float(np.mean([r["answer"].strip().startswith("[") for r in records])),
        "top_numbers": [[int(k), v] for k, v in Counter(int(x) for r in records for x in r["numbers"]).most_common(10)],
    }


def _tvd(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def compare_number_stats(
    test: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]], resamples: int = 5000, seed: int = 0
) -> dict[str, Any]:
    """How one teacher's numbers differ from another's: difference of means of each per-answer
    feature and total-variation distance of the digit and length distributions, each with a
    permutation p-value (answers shuffled between the two sets)."""
    if not test or not reference:
        return {}
    ft = [_answer_features(r) for r in test]
    fr = [_answer_features(r) for r in reference]
    out: dict[str, Any] = {"n_test": len(test), "n_reference": len(reference), "features": {}}
    for f in FEATURES:
        a = np.array([x[f] for x in ft if not math.isnan(x[f])])
        b = np.array([x[f] for x in fr if not math.isnan(x[f])])
        out["features"][f] = {
            "difference": float(a.mean() - b.mean()) if a.size and b.size else float("nan"),
            "p_permutation": permutation_pvalue(a, b, n_resamples=resamples, seed=seed),
        }
    digits = np.vstack([_digit_counts(test), _digit_counts(reference)])  # [answers, 10]
    lengths = np.zeros((len(test) + len(reference), MAX_NUMBERS + 1))
    for i, r in enumerate([*test, *reference]):
        lengths[i, len(r["numbers"])] = 1
    n = len(test)
    index_a, index_b = np.arange(n, dtype=float), np.arange(n, len(digits), dtype=float)
    for key, table in (("digit_distribution_tvd", digits), ("length_distribution_tvd", lengths)):

        def statistic(u: np.ndarray, v: np.ndarray, table: np.ndarray = table) -> float:
            return _tvd(table[u.astype(int)].sum(axis=0), table[v.astype(int)].sum(axis=0))

        observed = statistic(index_a, index_b)
        p = permutation_pvalue(
            index_a, index_b, statistic=statistic, n_resamples=resamples, seed=seed, alternative="greater"
        )
        out[key] = {"tvd": observed, "p_permutation": p}
    return out
