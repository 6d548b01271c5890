"""The mechanistic section (phase 4): where does a number meet the animal, and does it depend
on the number's entanglement category?

Every verdict word comes from `sublens.claims` (association claims, Holm within the mechanistic
family; raw and adjusted p side by side in the tests table):

- ``mechanistic.category.<label>``: the spike layer (top head, DLA top head) does not depend on
  the category. Category x label chi-square with a permutation p: a significant dependence
  contradicts it; otherwise it is inconclusive (no evidence of a dependence is not evidence of
  its absence).
- ``localisation.attribution``: "MLP direct logit attribution tracks the in-context bias". The
  partial Spearman correlation of the MLPs' summed DLA with the bias ratio *given the total
  logit difference* (the attributions add up to it, and it tracks the ratio, so part of a raw
  correlation is automatic), with a Freedman-Lane permutation p. It is an association in the
  model reading a number-priming prompt, through direct paths only: the text never reads it as
  the location of a learned bias (that is the freezing and transplant claims' business). A run
  recorded before the control existed is "inconclusive: not measured with the control for the
  automatic part".

The run's results.json is parsed once into `MechanisticResults`
(`sublens.experiments.mechanistic.results`) and read by attribute.

The package: `deciding` (the claims), `methods_prose` and `results_prose` (the paragraphs),
`floats` (the tables and figures); `build` assembles the section.
"""

from __future__ import annotations

from sublens.experiments.mechanistic.results import MechanisticResults
from sublens.report.latex import minus_signs
from sublens.report.sections import Section
from sublens.report.sections.mechanistic.deciding import (
    ATTRIBUTION,
    ATTRIBUTION_STATEMENT,
    CLAIM_TITLES,
    FAMILY,
    LABEL_TITLES,
    NOT_CONTROLLED,
    association_verdict,
    attribution_claim,
    category_claim,
    claim_settings,
    family,
)
from sublens.report.sections.mechanistic.floats import (
    MAX_ASPECT,
    MAX_ROWS,
    _figures,
    aspect,
    fmt_p_cell,
    numbers_table,
    tests_table,
)
from sublens.report.sections.mechanistic.methods_prose import FORMAT_WORDS, _methods, contrastive
from sublens.report.sections.mechanistic.results_prose import (
    CLOSURE_TOLERANCE,
    SCORE_TITLES,
    _attention_sentence,
    _attribution_paragraph,
    _category_paragraph,
    _headline,
    _incomplete,
    _intro,
)
from sublens.report.stages import StageRun
from sublens.results import read_run_results

TITLE = "Mechanistic analysis"


def build(run: StageRun) -> Section:
    results = read_run_results(run.results, MechanisticResults, run.ok)[0]
    figures = _figures(run, results)
    if results is None or results.partial or not results.numbers or results.consistency is None:
        return Section(
            TITLE,
            _methods(run, results),
            _incomplete(run),
            figures=[],
            headline=["mechanistic: incomplete (no per-number results)"],
        )
    numbers, consistency = results.numbers, results.consistency
    decisions = family(consistency, results.words)
    tables = {
        "mechanistic_numbers": numbers_table(results, numbers),
        "mechanistic_tests": tests_table(consistency, decisions),
    }
    text = minus_signs(
        "\n\n".join(
            filter(
                None,
                [
                    _intro(figures),
                    _category_paragraph(consistency, decisions),
                    _attribution_paragraph(results, consistency, numbers, decisions[ATTRIBUTION]),
                    _attention_sentence(results),
                ],
            )
        )
    )
    return Section(TITLE, _methods(run, results), text, tables, figures, _headline(consistency, decisions))


__all__ = [
    "ATTRIBUTION",
    "ATTRIBUTION_STATEMENT",
    "CLAIM_TITLES",
    "CLOSURE_TOLERANCE",
    "FAMILY",
    "FORMAT_WORDS",
    "LABEL_TITLES",
    "MAX_ASPECT",
    "MAX_ROWS",
    "NOT_CONTROLLED",
    "SCORE_TITLES",
    "aspect",
    "association_verdict",
    "attribution_claim",
    "build",
    "category_claim",
    "claim_settings",
    "contrastive",
    "family",
    "fmt_p_cell",
    "numbers_table",
    "tests_table",
]
