"""The mechanistic experiment's statistics (no model): is a label (spike layer, top head) tied to
the number's entanglement category, do the scores track the bias ratio, and the short verdict.

**The automatic part of a DLA correlation.** The attributions add up to the logit difference,
and the logit difference tracks the bias ratio, so any large component's attribution correlates
with the ratio whether or not it carries anything of its own. ``partial_spearman`` removes that
part: the Spearman correlation of a component's attribution with the bias ratio *given the
total logit difference* (ranks of both residualised on the rank of the total by least squares,
then correlated), with a Freedman–Lane permutation p-value (the residuals of the ratio's ranks
are permuted, the total is kept fixed). What it measures is an association across numbers in
the model reading a number-priming prompt, through direct paths only: not where a fine-tuned
model stores a learned bias.

The inputs are the per-number table (numbers.parquet, one row per number; columns in
`LABEL_COLUMNS`, `SCORE_COLUMNS`, ``bias_ratio``, ``category``); the outputs are the plain dicts
that results.json records under ``consistency`` (typed in `results.Consistency`). The
category x label association test itself is `association`'s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from sublens.claims import holm
from sublens.experiments.mechanistic.association import category_association, category_order
from sublens.stats import permutation_pvalue, summarize


def category_groups(table: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """The numbers of each known category (a boolean mask over the table rows), in the canonical
    order; without categories one group, "all numbers"."""
    categories = category_order(table["category"].tolist())
    groups = [(c, (table["category"] == c).to_numpy(dtype=bool, copy=True)) for c in categories]
    return groups or [("all numbers", np.ones(len(table), dtype=bool))]


def ratio_check(table: pd.DataFrame, bias_word_single_token: bool) -> dict[str, Any]:
    """Given bias ratios against the ones measured here (first token of the bias word): equal up
    to float error when the word is one token and the prompts are the entanglement study's."""
    given = table[table["bias_ratio_source"] == "given"]
    if given.empty:
        return {"n": 0}
    relative = (given["bias_ratio"] / given["bias_ratio_first_token"] - 1).abs()
    return {
        "n": len(given),
        "max_relative_difference": float(relative.max()),
        "bias_word_single_token": bias_word_single_token,
        "note": "given ratio vs first-token ratio measured on the attribution prompt",
    }


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rank correlation over the pairs where both are finite."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return {"rho": None, "p": None, "n": n, "note": "fewer than 3 pairs or a constant variable"}
    result = scipy_stats.spearmanr(a, b)
    return {
        "rho": _none_if_nan(float(result.statistic)),
        "p": _none_if_nan(float(result.pvalue)),
        "n": n,
    }


def _residualise(values: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Least-squares residuals of values [..., n] on the columns of design [n, k]."""
    coef, *_ = np.linalg.lstsq(design, np.moveaxis(values, -1, 0), rcond=None)
    return values - np.moveaxis(design @ coef, 0, -1)


def partial_spearman(
    x: Sequence[float],
    y: Sequence[float],
    z: Sequence[float],
    n_permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Spearman partial correlation of x and y given z (module docstring), over the triples where
    all three are finite: ranks of x and y residualised on [1, rank z], then correlated.

    p_parametric: t = r sqrt((n - 3) / (1 - r^2)) with n - 3 degrees of freedom (approximate for
    ranks). p_permutation: Freedman–Lane, the residuals of y's ranks permuted and residualised
    again (z kept fixed), two-sided, (1 + count) / (1 + n_permutations). Also the plain
    Spearman correlations of the three pairs."""
    a, b, c = (np.asarray(v, dtype=float) for v in (x, y, z))
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
    a, b, c = a[keep], b[keep], c[keep]
    n = int(a.size)
    out: dict[str, Any] = {
        "rho": None,
        "p_parametric": None,
        "p_permutation": None,
        "n": n,
        "n_permutations": n_permutations,
    }
    if n < 4 or any(np.all(v == v[0]) for v in (a, b, c)):
        out["note"] = "fewer than 4 triples or a constant variable"
        return out
    ra, rb, rc = (scipy_stats.rankdata(v) for v in (a, b, c))
    out.update(
        spearman_xy=float(np.corrcoef(ra, rb)[0, 1]),
        spearman_xz=float(np.corrcoef(ra, rc)[0, 1]),
        spearman_yz=float(np.corrcoef(rb, rc)[0, 1]),
    )
    design = np.column_stack([np.ones(n), rc])
    ea, eb = _residualise(ra, design), _residualise(rb, design)
    scale = math.sqrt(float(ea @ ea) * float(eb @ eb))
    if scale <= 1e-9 * n**3:
        out["note"] = "x or y is a monotone function of z: nothing is left once z is given"
        return out
    r = float(np.clip(ea @ eb / scale, -1.0, 1.0))
    out["rho"] = r
    if n > 3:
        t = r * math.sqrt((n - 3) / max(1e-300, 1 - r * r))
        out["p_parametric"] = float(2 * scipy_stats.t.sf(abs(t), n - 3))
    rng = np.random.default_rng(seed)
    norm_a = math.sqrt(float(ea @ ea))
    count, done = 0, 0
    while done < n_permutations:
        size = min(2000, n_permutations - done)
        permuted = eb[np.argsort(rng.random((size, n)), axis=1)]  # [size, n]
        again = _residualise(permuted, design)
        stats_ = (again @ ea) / (norm_a * np.sqrt((again * again).sum(axis=1)))
        count += int((np.abs(stats_) >= abs(r) - 1e-12).sum())
        done += size
    out["p_permutation"] = (1 + count) / (1 + n_permutations)
    return out


def variance_shares(components: dict[str, Sequence[float]], total: Sequence[float]) -> dict[str, float | None]:
    """Each component's share of the across-number variance of the total: cov(c, total) /
    var(total). When the components add up to the total the shares add up to 1."""
    t = np.asarray(total, dtype=float)
    if t.size < 2 or not np.isfinite(t).all() or float(t.var()) == 0.0:
        return {name: None for name in components}
    centred = t - t.mean()
    return {
        name: float(np.dot(np.asarray(v, dtype=float) - np.mean(v), centred) / np.dot(centred, centred))
        for name, v in components.items()
    }


ATTRIBUTION_CONTROL = "logit_diff"  # the total the partial correlation is given


def attribution_summary(table: pd.DataFrame, n_permutations: int = 10000, seed: int = 0) -> dict[str, Any]:
    """The attribution test's statistics: partial Spearman correlations of the MLPs' and the
    heads' summed DLA with the bias ratio given the total logit difference, and each
    component's share of the total's across-number variance (descriptive)."""
    ratio, total = table["bias_ratio"].to_numpy(float), table[ATTRIBUTION_CONTROL].to_numpy(float)
    out: dict[str, Any] = {
        "given": ATTRIBUTION_CONTROL,
        "method": "partial Spearman correlation given the total logit difference (ranks residualised "
        "on its rank by least squares); Freedman-Lane permutation p (total kept fixed), "
        "two-sided; parametric t p (n - 3 df) beside it",
        "mlp": partial_spearman(table["dla_mlp"].to_numpy(float), ratio, total, n_permutations, seed),
        "heads": partial_spearman(table["dla_heads"].to_numpy(float), ratio, total, n_permutations, seed),
    }
    parts = {"mlp": table["dla_mlp"], "heads": table["dla_heads"]}
    if "dla_embed" in table.columns:
        parts["embed"] = table["dla_embed"]
    if "dla_constant" in table.columns:
        parts["constant"] = table["dla_constant"]
    out["variance_share"] = variance_shares({k: v.to_numpy(float) for k, v in parts.items()}, total)
    return out


# per-number table columns that the summary uses
LABEL_COLUMNS = {
    "spike_layer": "spike layer",
    "top_head": "top head at the spike layer",
    "dla_top_head": "top head by direct logit attribution",
}
SCORE_COLUMNS = {
    "head_score": "top head's contrastive score",
    "mlp_score": "MLP contrastive score at the spike layer",
    "spike_jump": "similarity jump at the spike",
    "dla_heads": "DLA of all heads",
    "dla_mlp": "DLA of all MLPs",
    "logit_diff": "logit difference",
}


def _labels(frame: pd.DataFrame, column: str) -> list[str]:
    """Labels of a label column as text: heads as they are (L3H2), spike layers as L<layer>."""
    if column == "spike_layer":
        return [f"L{int(v)}" for v in frame[column]]
    return [str(v) for v in frame[column]]


def _permutation_or_none(a: np.ndarray, b: np.ndarray, n_permutations: int, seed: int) -> float | None:
    """Permutation p-value of a difference in means; None with fewer than 2 values on a side."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return None
    return permutation_pvalue(a, b, seed=seed, n_resamples=n_permutations)


def _label_distributions(table: pd.DataFrame, known: pd.DataFrame, categories: list[str]) -> dict[str, Any]:
    """Per label column: the labels' counts over all numbers and within each category, most
    common first."""
    distributions: dict[str, Any] = {}
    for column in LABEL_COLUMNS:
        counts = {"all": dict(Counter(_labels(table, column)).most_common())}
        for c in categories:
            counts[c] = dict(Counter(_labels(known[known["category"] == c], column)).most_common())
        distributions[column] = counts
    return distributions


def _category_tests(known: pd.DataFrame, categories: list[str], n_permutations: int, seed: int) -> dict[str, Any]:
    """With two or more categories: each label's association with the category, each score's
    summary per category and, when there is a random category, each other category's
    permutation test against it (the matched null)."""
    tests: dict[str, Any] = {
        "association": {
            column: category_association(known["category"].tolist(), _labels(known, column), n_permutations, seed)
            for column in LABEL_COLUMNS
        },
        "by_category": {
            column: {
                c: summarize(known.loc[known["category"] == c, column].to_numpy(float), seed=seed) for c in categories
            }
            for column in SCORE_COLUMNS
        },
    }
    if "random" in categories:
        reference = known[known["category"] == "random"]
        tests["vs_random"] = {
            column: {
                c: _permutation_or_none(
                    known.loc[known["category"] == c, column].to_numpy(float),
                    reference[column].to_numpy(float),
                    n_permutations,
                    seed,
                )
                for c in categories
                if c != "random"
            }
            for column in SCORE_COLUMNS
        }
    return tests


def _ratio_correlations(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Spearman correlation of the bias ratio with each score, with Holm-adjusted p-values
    over the scores (one family: the verdict marks the ones that survive it)."""
    ratio = table["bias_ratio"].to_numpy(float)
    correlations = {column: spearman(ratio, table[column].to_numpy(float)) for column in SCORE_COLUMNS}
    adjusted = holm([c["p"] for c in correlations.values()])
    for result, p_holm in zip(correlations.values(), adjusted, strict=True):
        result["p_holm"] = p_holm
    return correlations


def consistency_summary(
    table: pd.DataFrame, n_permutations: int = 10000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Per category: distributions of spike layers and top heads; tests of association with
    the category; per-category summaries of the scores (with permutation tests against the
    random category when there is one); Spearman correlations of the bias ratio with the scores."""
    known = table[table["category"].notna()]
    categories = category_order(known["category"].tolist())
    summary: dict[str, Any] = {
        "n_numbers": len(table),
        "alpha": alpha,
        "categories": {c: int((known["category"] == c).sum()) for c in categories},
    }
    summary["distributions"] = _label_distributions(table, known, categories)
    if len(categories) >= 2:
        summary.update(_category_tests(known, categories, n_permutations, seed))
    else:
        summary["note"] = (
            "categories unknown (or only one): per-category distributions, "
            "association tests and per-category summaries skipped"
        )
    if "bias_ratio_source" in table.columns:
        summary["bias_ratio_source"] = dict(Counter(table["bias_ratio_source"]).most_common())
    summary["correlations"] = _ratio_correlations(table)
    if {"dla_mlp", "dla_heads", ATTRIBUTION_CONTROL} <= set(table.columns):
        summary["attribution"] = attribution_summary(table, n_permutations, seed)
    return summary


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return f"p={p:.2g}" if p >= 0.001 else "p<0.001"


def _mode_line(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "none"
    label, n = next(iter(counts.items()))
    return f"{label} ({n}/{total})"


def verdict(summary: dict[str, Any], bias: str = "owl") -> list[str]:
    """The short verdict: what was measured and what the statistics say, worded by the data."""
    alpha = summary["alpha"]
    categories = list(summary["categories"])
    lines = []
    for column, title in LABEL_COLUMNS.items():
        counts = summary["distributions"][column]
        line = f"{title}: most common {_mode_line(counts['all'])}"
        if categories:
            line += "; by category " + ", ".join(f"{c} {_mode_line(counts[c])}" for c in categories)
        test = summary.get("association", {}).get(column)
        if test is None:
            line += ". Not tested against the categories (categories unknown)."
        elif not test["applicable"]:
            line += (
                ". No test: the same for every number, in every category."
                if test["reason"] == "every number has the same label"
                else f". No test: {test['reason']}."
            )
        else:
            excess = test["max_excess"]
            depends = test["p_permutation"] < alpha
            line += (
                f". Category x label: chi2={test['chi2']:.1f} (dof {test['dof']}), permutation "
                f"{_fmt_p(test['p_permutation'])}, Cramér's V={test['cramers_v']:.2f}; largest excess "
                f"{excess['label']} in {excess['category']} ({excess['excess']:+.0%}, max-statistic "
                f"{_fmt_p(excess['p_permutation'])}) -> "
                + (
                    "it depends on the category."
                    if depends
                    else f"no evidence that it depends on the category (alpha={alpha})."
                )
            )
            if min(summary["categories"].values()) < 5:
                line += " Few numbers per category: low power."
        lines.append(line)
    corr = summary["correlations"]
    parts = []
    for column, title in SCORE_COLUMNS.items():
        c = corr[column]
        if c["rho"] is None:
            parts.append(f"{title} n/a")
        else:
            mark = "*" if c.get("p_holm") is not None and c["p_holm"] < alpha else ""
            parts.append(f"{title} rho={c['rho']:+.2f}{mark} ({_fmt_p(c['p'])})")
    n = max((c["n"] for c in corr.values()), default=0)
    sources = summary.get("bias_ratio_source", {})
    source = (
        "measured here: first-token ratio on the attribution prompt"
        if set(sources) == {"measured_first_token"}
        else "given with the numbers"
        if set(sources) == {"given"}
        else "given where known, else measured here"
    )
    lines.append(
        f"Spearman correlation of the {bias} bias ratio ({source}) with (n={n}; p uncorrected, "
        f"* Holm-adjusted p<{alpha} over the {len(corr)} correlations): " + ", ".join(parts) + "."
    )
    return lines
