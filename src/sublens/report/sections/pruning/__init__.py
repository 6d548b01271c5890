"""The pruning section: does the owl bias survive removing attention heads?

Reads a `pruning` run directory: its results.json parsed once into `PruningResults`
(`sublens.experiments.pruning.results`). Verdict words come only from `sublens.claims`
(`decisions` below builds the claims from the recorded numbers):

- **survival** ("the bias survives pruning ~40% of the heads"): a claim of *no effect* on the
  base-controlled panel-share retention of the entropy criterion at the claim fraction
  (config ``claim_fraction``, 0.6 kept; the measured pruned fraction closest to it). Per
  question, log(share biased pruned / share base pruned) - log(share biased unpruned / share
  base unpruned): the same heads are removed from the unbiased base model, so pruning damage
  common to both models cancels. Unit: question (one fixed model); Student-t on the log
  ratios; supported only by equivalence (the CI inside the margin, config ``claims``).
- **entropy vs random** (entropy-ranked pruning retains more of the bias than random pruning
  of as many heads): a two-sided Monte Carlo rank test of the entropy criterion's
  base-controlled retention among the random draws' at the claim fraction, never one draw.
- Holm within the family ``pruning``. Both are decided only where the pruned models are inside
  the degradation bound (config ``max_perplexity_ratio``: perplexity over the unpruned model's,
  for the biased and the base model); outside it they are inconclusive. A run without the
  pruned-base control (recorded before it existed) leaves the survival claim inconclusive.

The package: `reading` (results and config read for the section, degradation), `deciding` (the
claims), `floats` (the sweep table and the figures), `methods_prose` and `results_prose`
(the paragraphs); `build` assembles the section.
"""

from __future__ import annotations

from sublens.experiments.pruning.results import PruningResults
from sublens.report.sections import Section, figure_label
from sublens.report.sections.pruning.deciding import (
    RankClaim,
    decisions,
    draws_needed,
    rank_claim,
    rank_pvalue,
    step_decisions,
    survival_claim,
)
from sublens.report.sections.pruning.floats import (
    figures,
    retention_cell,
    sweep_caption,
    sweep_table,
)
from sublens.report.sections.pruning.methods_prose import corpus_text, methods
from sublens.report.sections.pruning.reading import (
    CRITERION_NAMES,
    DEFAULT_BOUND,
    FAMILY,
    NO_BASE,
    NO_BASE_SETTLE,
    PAPER_KEPT,
    SHORT,
    Interval,
    Level,
    bound_of,
    claim_fraction,
    claim_settings,
    damage,
    draw_damage,
    inside_bound,
    last_inside,
)
from sublens.report.sections.pruning.results_prose import (
    headline_line,
    heads_location,
    results_text,
)
from sublens.report.stages import StageRun
from sublens.results import read_run_results


def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, PruningResults, run.ok)
    steps = results.steps if results is not None else []
    incomplete = (not run.ok) or bool(results is None or results.partial) or not steps
    text, headline = results_text(run, results, incomplete, unreadable)
    tables = {"pruning_sweep": sweep_table(results, run.config, incomplete)} if results and steps else {}
    figs = figures(run, results)
    if figs and steps:
        refs = " and ".join(f"Figure~\\ref{{{figure_label('pruning', f.stem)}}}" for f in figs)
        text += f" See {refs}."
    return Section(
        title="Head pruning",
        methods=methods(run, results) if run.config else "The pruning run has no configuration.",
        results=text,
        tables=tables,
        figures=figs,
        headline=headline,
    )


__all__ = [
    "CRITERION_NAMES",
    "DEFAULT_BOUND",
    "FAMILY",
    "NO_BASE",
    "NO_BASE_SETTLE",
    "PAPER_KEPT",
    "SHORT",
    "Interval",
    "Level",
    "RankClaim",
    "bound_of",
    "build",
    "claim_fraction",
    "claim_settings",
    "corpus_text",
    "damage",
    "decisions",
    "draw_damage",
    "draws_needed",
    "figures",
    "headline_line",
    "heads_location",
    "inside_bound",
    "last_inside",
    "methods",
    "rank_claim",
    "rank_pvalue",
    "results_text",
    "retention_cell",
    "step_decisions",
    "survival_claim",
    "sweep_caption",
    "sweep_table",
]
