"""Category-association statistics of the mechanistic experiment (numpy and scipy, no model):
the entanglement categories' canonical order, and whether a per-number label (spike layer, top
head) is tied to the number's category, by a category x label contingency table with
permutation tests. Kept apart from `analysis` (which assembles the consistency summary and the
verdict from this and the correlations) because the permutation machinery is self-contained.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

CATEGORY_ORDER = ("increased", "decreased", "unchanged", "random")


def category_order(categories: Sequence[str | None]) -> list[str]:
    """Known categories in the canonical order (increased, decreased, unchanged, random, others)."""
    present = {c for c in categories if isinstance(c, str)}  # None / NaN: unknown
    return [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER))


def _chi2_statistic(tables: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (((tables - expected) ** 2) / expected).sum(axis=(-2, -1))


def _excess(tables: np.ndarray) -> np.ndarray:
    """For each (category, label): share of the category's numbers with that label minus the
    share among all other numbers. tables [..., C, K] -> [..., C, K]."""
    rows = tables.sum(axis=-1, keepdims=True)
    cols = tables.sum(axis=-2, keepdims=True)
    total = tables.sum(axis=(-2, -1), keepdims=True)
    others = np.maximum(total - rows, 1)
    return tables / np.maximum(rows, 1) - (cols - tables) / others


def _permutation_counts(
    row_code: np.ndarray,
    col_code: np.ndarray,
    shape: tuple[int, int],
    expected: np.ndarray,
    chi2: float,
    observed_excess: float,
    n_permutations: int,
    seed: int,
) -> tuple[int, int]:
    """How many permutations of the category labels (margins fixed) reach the observed chi-square
    and the observed largest excess. Tables are built in chunks of 2000 permutations at once so
    that memory stays bounded whatever n_permutations is."""
    C, K = shape
    N = len(row_code)
    rng = np.random.default_rng(seed)
    count_chi2 = count_excess = 0
    chunk = 2000
    done = 0
    while done < n_permutations:
        size = min(chunk, n_permutations - done)
        permuted = np.argsort(rng.random((size, N)), axis=1)
        shuffled_rows = row_code[permuted]  # [size, N]
        flat = (np.arange(size)[:, None] * C * K + shuffled_rows * K + col_code[None]).ravel()
        tables = np.bincount(flat, minlength=size * C * K).reshape(size, C, K).astype(float)
        count_chi2 += int((_chi2_statistic(tables, expected) >= chi2 - 1e-9).sum())
        count_excess += int((_excess(tables).max(axis=(1, 2)) >= observed_excess - 1e-12).sum())
        done += size
    return count_chi2, count_excess


def category_association(
    categories: Sequence[str], labels: Sequence[str], n_permutations: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Is a label (top head, spike layer) tied to a category? Category x label contingency table;
    chi-square statistic with its asymptotic p-value (scipy.stats.chi2_contingency) and a
    permutation p-value (category labels shuffled, margins fixed: valid at small counts); the
    largest "excess" (a label's share in one category minus its share elsewhere) with a
    max-statistic permutation p-value, which answers "is any label top for one category more
    than for the others" with the multiple comparisons accounted for; Cramér's V."""
    rows = sorted(set(categories), key=lambda c: (CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else 99, c))
    cols = [label for label, _ in Counter(labels).most_common()]
    row_code = np.array([rows.index(c) for c in categories])
    col_code = np.array([cols.index(label) for label in labels])
    C, K, N = len(rows), len(cols), len(row_code)
    table = np.zeros((C, K), dtype=np.int64)
    np.add.at(table, (row_code, col_code), 1)
    out: dict[str, Any] = {
        "categories": rows,
        "labels": cols,
        "table": table.tolist(),
        "n": N,
    }
    if C < 2 or K < 2:
        out.update(
            applicable=False,
            reason=("only one category" if C < 2 else "every number has the same label"),
        )
        return out
    chi2, p_asym, dof, expected = scipy_stats.chi2_contingency(table, correction=False)
    excess = _excess(table.astype(float))
    c_max, k_max = np.unravel_index(np.argmax(excess), excess.shape)
    observed_excess = float(excess[c_max, k_max])
    count_chi2, count_excess = _permutation_counts(
        row_code, col_code, (C, K), expected, chi2, observed_excess, n_permutations, seed
    )
    out.update(
        applicable=True,
        chi2=float(chi2),
        dof=int(dof),
        p_asymptotic=float(p_asym),
        p_permutation=(1 + count_chi2) / (1 + n_permutations),
        cramers_v=float(math.sqrt(chi2 / (N * (min(C, K) - 1)))),
        min_expected=float(expected.min()),
        max_excess={
            "category": rows[c_max],
            "label": cols[k_max],
            "excess": observed_excess,
            "share_in_category": float(table[c_max, k_max] / table[c_max].sum()),
            "p_permutation": (1 + count_excess) / (1 + n_permutations),
        },
        n_permutations=n_permutations,
    )
    return out
