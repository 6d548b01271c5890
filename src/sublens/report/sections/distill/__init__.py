"""distill: squeezing-heads distillation from a biased teacher into a student of another family,
against an LM-only student and a student distilled from the unbiased base model.

Reads a `distill` run directory: its results.json parsed once into `DistillResults`
(`sublens.experiments.distill.results`; an unfinished run's unreadable results are reported as
incomplete). Two claims, decided by `sublens.claims` with training seeds as the unit (family
"distill", Holm):

- ``distill.transfer``, "the owl bias crosses architectures through SHD": owl's panel-share
  ratio of the biased-SHD student over its matched control, the LM-loss-only student trained
  on the same texts with the same seed;
- ``distill.specific``, "the rise is the teacher's bias, not attention distillation as such":
  the same ratio over the student distilled from the unbiased base model.

The per-seed log ratios are the experiment's ``comparisons.<pair>.share_ratio.per_seed_log``;
a run recorded before they existed has one seed, whose log ratio is that of its ratio. One
seed never decides a claim ("inconclusive (1 seed)"); its question-level CIs are labelled as
describing that one r

The package: `reading` (what the section reads from the run), `deciding` (the claims),
`methods_prose` and `results_prose` (the paragraphs and the headline), `floats` (the tables and
the figures); `build` assembles the section.
"""

from __future__ import annotations

from sublens.experiments.distill.results import DistillResults
from sublens.report.sections import Section, figure_label
from sublens.report.sections.common import figures_present, preference_definition
from sublens.report.sections.distill.deciding import (
    FAMILY,
    decisions,
    distill_claims,
    per_seed_logs,
    shd_verdict,
)
from sublens.report.sections.distill.floats import FIGURES, _alpha_table, _table
from sublens.report.sections.distill.methods_prose import _methods
from sublens.report.sections.distill.reading import ALPHA_TABLE, TABLE, TITLE
from sublens.report.sections.distill.results_prose import _headline, _results
from sublens.report.stages import StageRun
from sublens.results import read_run_results

__all__ = ["FAMILY", "FIGURES", "TITLE", "build", "decisions", "distill_claims", "per_seed_logs", "shd_verdict"]


def build(run: StageRun) -> Section:
    r, unreadable = read_run_results(run.results, DistillResults, run.ok)
    results, verdict = _results(run, r, unreadable)
    figures = figures_present(run, FIGURES)
    # The α figure gives every layer's quantiles; the α table (means) is for a run without it:
    # the same numbers twice would be one more float for the pages before the References.
    alphas_drawn = any(f.stem == "distill_alphas" for f in figures)
    tables = {
        stem: t for stem, t in ((TABLE, _table(r)), (ALPHA_TABLE, None if alphas_drawn else _alpha_table(r))) if t
    }
    if ALPHA_TABLE in tables:
        results += f" Table~\\ref{{tab:{ALPHA_TABLE}}} summarises the squeezing weights per layer."
    if figures:
        results += " See " + ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures) + "."
    return Section(
        TITLE,
        _methods(run, r),
        results,
        tables,
        figures,
        _headline(run, r, verdict),
        measurement=preference_definition(run.config.get("preference") or {}),
    )
