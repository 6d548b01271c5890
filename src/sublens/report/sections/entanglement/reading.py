"""Reading an entanglement run's results for the section: the recorded statistics, whether its
categories are owl-specific, the claim settings of its config, and the small pieces of wording
every part of the section shares (set names, ratios with their CIs, quotes).
"""

from __future__ import annotations

import math
from typing import Any

from sublens.claims import MIN_UNITS, ClaimSettings, Decision
from sublens.experiments.entanglement.analysis import set_title
from sublens.experiments.entanglement.results import (
    EntanglementResults,
    LengthEntry,
    RatioSummary,
    SetStatistics,
)
from sublens.report.latex import escape, fmt
from sublens.report.verdicts import claim_text

LABELS = {
    "increased": "Increased",
    "decreased": "Decreased",
    "unchanged": "Unchanged",
    "random": "Random",
    "template": "Template words",
}
Decided = dict[str, dict[str, Decision]]  # set -> test -> Decision


def _stats(results: EntanglementResults) -> dict[str, SetStatistics]:
    return results.category_stats or {}


def owl_specific(results: EntanglementResults) -> bool:
    """Whether the run's categories come from the owl-minus-control shift (and its claims are
    recorded): runs before the control-animal context have neither."""
    return (
        results.design is not None
        and results.design.owl_specific
        and results.claims is not None
        and bool(results.claims.tests)
    )


def _settings(config: dict[str, Any]) -> ClaimSettings:
    raw = config.get("claims")
    return ClaimSettings(**raw) if isinstance(raw, dict) else ClaimSettings()


def set_name(name: str) -> str:
    """A candidate set in the prose and tables: 'the 2-digit set' reads, 'ar2' is a key."""
    return escape(set_title(name))


def _sets_phrase(names: list[str]) -> str:
    """'the vocabulary set', 'the vocabulary and 1-digit sets'."""
    titles = [set_name(n) for n in names]
    if len(titles) == 1:
        return f"the {titles[0]} set"
    return f"the {', '.join(titles[:-1])} and {titles[-1]} sets"


def _tex(text: str) -> str:
    """Plain text from sublens.claims (reasons, statements) as LaTeX, as every section writes it."""
    return claim_text(text)


def _num(value: Any) -> float:
    """A number from the config; None/missing -> NaN, so comparisons are simply False."""
    return float(value) if isinstance(value, int | float) else math.nan


def _too_few(s: RatioSummary) -> bool:
    return s.n < MIN_UNITS["number"] or not (math.isfinite(s.geo_ci_low) and math.isfinite(s.geo_ci_high))


def _geo(s: RatioSummary, unit: str = "number") -> str:
    if _too_few(s):
        return rf"{fmt(s.geo_mean)}\texttimes{{}} (too few {unit}s for a CI, $n = {s.n}$)"
    low, high = fmt(s.geo_ci_low), fmt(s.geo_ci_high)
    return rf"{fmt(s.geo_mean)}\texttimes{{}} [{low}, {high}]"


def _quote(text: str) -> str:
    return f"``{escape(text)}''"


def _per_length(results: EntanglementResults) -> dict[str, LengthEntry]:
    return dict(results.lengths.per_length) if results.lengths is not None else {}


def _n_tests(decided: Decided) -> int:
    return sum(len(tests) for tests in decided.values())
