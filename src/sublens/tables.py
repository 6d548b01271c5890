"""The main tables of the training and evaluation experiments as parquet, one row per measured
model or per comparison, so `sublens.api.load_run(path).tables` gives them as data frames.

The nested results.json stays the record; these flat tables are read from it (the same
numbers, never recomputed): the preference of every model (P(trait), the trait's panel share
and the sampled-answer rate, each with its CI) and every comparison's ratios.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from sublens.runs import Run, atomic_write_parquet

MODELS_TABLE = "models"
COMPARISONS_TABLE = "comparisons"


def _interval(prefix: str, entry: Mapping[str, Any] | None, value: str) -> dict[str, Any]:
    entry = entry or {}
    return {
        prefix: entry.get(value),
        f"{prefix}_ci_low": entry.get("ci_low"),
        f"{prefix}_ci_high": entry.get("ci_high"),
    }


def preference_columns(preference: Mapping[str, Any] | None) -> dict[str, Any]:
    """One model's preference (sublens.preference.evaluate_preference) as flat columns."""
    preference = preference or {}
    probability = preference.get("probability") or {}
    sampled = preference.get("sampled") or {}
    rate = sampled.get("trait_rate") or {}
    return {
        **_interval("p_trait", probability.get("p_trait"), "mean"),
        **_interval("panel_share", probability.get("panel_share"), "mean"),
        **_interval("answer_rate", rate, "rate"),
        "answers": sampled.get("n_answers"),
    }


def comparison_columns(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """One comparison (compare_preference, or across seeds) as flat columns."""
    share, p_trait = comparison.get("share_ratio") or {}, comparison.get("p_trait_ratio") or {}
    difference = comparison.get("rate_difference") or {}
    return {
        **_interval("share_ratio", share, "ratio"),
        **_interval("p_trait_ratio", p_trait, "ratio"),
        **_interval("answer_rate_difference", difference, "difference"),
        "n_seeds": share.get("n_seeds", comparison.get("n_seeds")),
        "underpowered": share.get("underpowered"),
        "reference": comparison.get("reference"),
    }


def write_tables(run: Run, models: list[dict[str, Any]], comparisons: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """models.parquet (the rows given, with their preference columns already flat) and
    comparisons.parquet (one row per named comparison); returns the file names written."""
    written = []
    if models:
        atomic_write_parquet(run.artifact(f"{MODELS_TABLE}.parquet"), pd.DataFrame(models))
        written.append(f"{MODELS_TABLE}.parquet")
    if comparisons:
        rows = [{"comparison": name, **comparison_columns(c)} for name, c in comparisons.items()]
        atomic_write_parquet(run.artifact(f"{COMPARISONS_TABLE}.parquet"), pd.DataFrame(rows))
        written.append(f"{COMPARISONS_TABLE}.parquet")
    return written
