"""subliminal: students fine-tuned on a biased teacher's numbers, by freeze mode, against control
students; worded by the measured ratios (does the bias transfer, and does freezing the MLP
layers block it?).

Reads a `subliminal` run directory: its results.json parsed once into `SubliminalResults`
(`sublens.results.read_run_results`: an unfinished run's unreadable results are said, a finished
run's raise ResultsError), its config.yaml as written.

The package: `reading` (the section's names and what it looks up in the results),
`deciding` (the claims and their verdicts in the text), `floats` (the tables and the figures),
`methods_prose`, `results_prose` and `data_prose` (the paragraphs; the data sentences are part
of the results); `build` assembles the section.
"""

from __future__ import annotations

from sublens.experiments.subliminal.results import SubliminalResults
from sublens.report.sections import Section, figure_label
from sublens.report.sections.common import preference_definition
from sublens.report.sections.subliminal.data_prose import (
    data_sentence,
    divergence_sentence,
    enrichment_sentence,
)
from sublens.report.sections.subliminal.deciding import (
    DIVERGENCE_LEAD,
    ENTANGLEMENT_LEAD,
    FREEZE_MODES,
    FREEZING_LEAD,
    decisions,
    divergence_sets,
    other_arms,
)
from sublens.report.sections.subliminal.floats import (
    _figures,
    _prompt_table,
    _table,
    preference_caption,
)
from sublens.report.sections.subliminal.methods_prose import _methods
from sublens.report.sections.subliminal.reading import (
    CONTROL,
    FEATURE_WORDS,
    OWL,
    PROMPT_TABLE,
    TABLE,
    TITLE,
    arm_modes,
    mode_words,
    p_trait_ratio,
    rate_difference,
    share_ratio,
    vs_control,
)
from sublens.report.sections.subliminal.results_prose import _headline, _results
from sublens.report.stages import StageRun
from sublens.results import read_run_results


def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, SubliminalResults, run.ok)
    text, decided = _results(run, results, unreadable)
    made = ((TABLE, _table(results)), (PROMPT_TABLE, _prompt_table(results))) if results else ()
    tables = {name: t for name, t in made if t}
    figures = _figures(run, results)
    if figures:
        refs = ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures)
        text += f" See {refs}."
    return Section(
        TITLE,
        _methods(run, results),
        text,
        tables,
        figures,
        _headline(results, decided, run.config),
        measurement=preference_definition(run.config.get("preference") or {}),
    )


__all__ = [
    "CONTROL",
    "DIVERGENCE_LEAD",
    "ENTANGLEMENT_LEAD",
    "FEATURE_WORDS",
    "FREEZE_MODES",
    "FREEZING_LEAD",
    "OWL",
    "PROMPT_TABLE",
    "TABLE",
    "TITLE",
    "arm_modes",
    "build",
    "data_sentence",
    "decisions",
    "divergence_sentence",
    "divergence_sets",
    "enrichment_sentence",
    "mode_words",
    "other_arms",
    "p_trait_ratio",
    "preference_caption",
    "rate_difference",
    "share_ratio",
    "vs_control",
]
