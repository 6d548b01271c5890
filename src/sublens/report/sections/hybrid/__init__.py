"""The hybrid section: where in the weights is the bias? LM-head swaps and a transplant matrix.

Reads a `hybrid` run directory: its results.json parsed once into `HybridResults`
(`sublens.experiments.hybrid.results`). Every hybrid has a *bias
fraction* f = log(m_hybrid / m_base) / log(m_biased / m_base) for the run's metric m (panel share
or P(trait)): 0 = as the base model, 1 = as the biased model. Its 95% CI here comes from the CI of
m_hybrid / m_base as recorded (Student t over questions on the log ratios in current runs, a
paired bootstrap in older ones) with the biased model's shift held fixed. These fractions are
descriptive; no verdict is decided here.

Three claims, all decided by `sublens.claims` (Holm within the family "hybrid"; unit: question,
since the two models are fixed; margin from the run's `claims` settings), see `decisions`:
- localisation.lm_head, "the bias is not in the LM head" (prediction: none): the LM head's main
  effect in the body × head swap, per question the mean of log(m[base + biased head] / m[base])
  and log(m[biased] / m[biased + base head]); supported only when its CI lies inside the margin.
- localisation.transplant, "the bias is seated in the MLP layers" by transplant (prediction:
  increase): per question, the MLP transplant's main effect minus the attention transplant's.
- localisation.patching, "patching MLP outputs carries the bias more than patching attention
  outputs" (prediction: increase): per question, the target - foil logit difference with every
  layer's MLP outputs patched minus that with every layer's attention outputs patched (biased
  into base; sign-reversed for base into biased), averaged over directions. A run without
  patching reads "inconclusive: not measured".
A hybrid whose perplexity exceeds the run's degraded factor x base is gibberish: its number is
not evidence, and a claim that rests on one is inconclusive (claims.decide on no estimate, with
that reason). The depth range named as carrying the bias is descriptive (the MLP range with the
largest fraction brought into the base, if its CI clears every other range's).

The package: `reading` (the matrix cells from the results), `deciding` (the claims),
`floats` (the tables and the heatmap caption), `methods_prose` and `results_prose` (the
paragraphs); `build` assembles the section.
"""

from __future__ import annotations

from sublens.experiments.hybrid.results import HybridResults
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.hybrid.deciding import (
    DIRECTION_WORDS,
    FAMILY,
    claims,
    decisions,
    patching_contrast,
    swap_effects,
)
from sublens.report.sections.hybrid.floats import (
    DIRECTION_TITLES,
    heatmap_caption,
    matrix_table,
    patching_table,
)
from sublens.report.sections.hybrid.methods_prose import NORM_WORDS, methods
from sublens.report.sections.hybrid.reading import (
    GROUP_ORDER,
    METRIC_NAMES,
    Cell,
    cells,
    component_title,
    metric_key,
)
from sublens.report.sections.hybrid.results_prose import carrying_range, results_text
from sublens.report.stages import StageRun
from sublens.results import read_run_results


def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, HybridResults, run.ok)
    all_cells = cells(results)
    incomplete = (not run.ok) or bool(results is None or results.partial) or not all_cells
    text, headline = results_text(run, results, all_cells, incomplete, unreadable)
    tables = {"hybrid_matrix": matrix_table(run, results, all_cells, incomplete)} if results and all_cells else {}
    if results is not None and results.patching is not None and results.patching.cells:
        tables["hybrid_patching"] = patching_table(results.patching, results.trait)
    figures = []
    if "hybrid_heatmap" in run.figures() and results is not None:
        figures.append(Figure("hybrid_heatmap", heatmap_caption(run, results, all_cells), wide=True))
        if all_cells:
            text += f" See Figure~\\ref{{{figure_label('hybrid', 'hybrid_heatmap')}}}."
    return Section(
        title="Component transplants",
        methods=methods(run, results) if run.config else "The hybrid run has no configuration.",
        results=text,
        tables=tables,
        figures=figures,
        headline=headline,
    )


__all__ = [
    "DIRECTION_TITLES",
    "DIRECTION_WORDS",
    "FAMILY",
    "GROUP_ORDER",
    "METRIC_NAMES",
    "NORM_WORDS",
    "Cell",
    "build",
    "carrying_range",
    "cells",
    "claims",
    "component_title",
    "decisions",
    "heatmap_caption",
    "matrix_table",
    "methods",
    "metric_key",
    "patching_contrast",
    "patching_table",
    "results_text",
    "swap_effects",
]
