"""The token-entanglement section (phases 1-3): do 'entangled' numbers raise P(owl) more?

The claim under test is that token entanglement (Zur et al. 2025) does not explain the
transfer: numbers the owl context favours (Increased) raise P(owl | 'You love N') no more than
numbers it disfavours or leaves alone, or than Random numbers of the same baseline frequency.

Reads an `entanglement` run directory: its results.json parsed once into `EntanglementResults`
(`sublens.experiments.entanglement.results`). This module decides nothing itself: every verdict
word comes from a ``sublens.claims`` Decision. A run records its claims (``claims``: claim,
estimand, unit = numbers, estimate per set and test); the section re-decides them (Holm over
every set x test, as ``sublens.entanglement.decide_recorded``) and words the text from the
Decisions (verdict, reason, what would settle it). A run without the control-animal context
(recorded before categories were owl-specific) has no claims: each one is decided on no
estimate ("not measured") and the text says why.

A run given a teacher run also has tuned sets (``ar2@tuned``: the same candidates categorised by
the shift the fine-tuning put into the owl teacher against its control teacher, the teachers
that wrote the subliminal data). They get their rows in every table, a figure of their own and a
paragraph; their claims are re-decided as their own Holm family (``tuned_claims``), so the
prompted sets' verdicts read as without them.

The package: `reading` (the results and config read for the section, shared wording),
`deciding` (the claims re-decided, a Decision in words), `methods_prose` and `results_prose`
(the paragraphs and the headline), `floats` (the tables and the figures' captions); `build`
assembles the section.
"""

from __future__ import annotations

from sublens.experiments.entanglement.results import EntanglementResults
from sublens.report.sections import Section
from sublens.report.sections.entanglement.deciding import (
    decision_text,
    decisions,
    primary,
    tuned_decisions,
)
from sublens.report.sections.entanglement.floats import (
    SHORT,
    TEST_LABELS,
    _figures,
    categories_table,
    claims_table,
    length_table,
    reverse_table,
)
from sublens.report.sections.entanglement.methods_prose import _incomplete, _methods
from sublens.report.sections.entanglement.reading import (
    LABELS,
    Decided,
    _per_length,
    owl_specific,
    set_name,
)
from sublens.report.sections.entanglement.results_prose import _headline, _results
from sublens.report.stages import StageRun
from sublens.results import read_run_results

TITLE = "Token entanglement"


def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, EntanglementResults, run.ok)
    if results is None or not results.category_stats:
        return Section(
            TITLE,
            _methods(run, results),
            _incomplete(run, results, unreadable),
            headline=["entanglement: incomplete (no phase-2 statistics)"],
        )
    decided = decisions(results, run.config)
    tuned = tuned_decisions(results)
    figures = _figures(run, results)
    tables = {
        "entanglement_categories": categories_table(results, decided, tuned),
        **({"entanglement_claims": claims_table(results, decided, tuned)} if owl_specific(results) else {}),
        **({"entanglement_reverse": reverse_table(results)} if results.neutral is not None else {}),
        **({"entanglement_length": length_table(results)} if _per_length(results) else {}),
    }
    text = _results(results, decided, set(tables), figures, tuned)
    return Section(TITLE, _methods(run, results), text, tables, figures, _headline(results, decided, tuned))


__all__ = [
    "LABELS",
    "SHORT",
    "TEST_LABELS",
    "TITLE",
    "Decided",
    "build",
    "categories_table",
    "claims_table",
    "decision_text",
    "decisions",
    "length_table",
    "owl_specific",
    "primary",
    "reverse_table",
    "set_name",
    "tuned_decisions",
]
