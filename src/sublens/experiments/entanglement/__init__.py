"""entanglement: do the numbers the owl context favours ('entangled' numbers) raise P(owl) more?

Phase 1 scores every candidate number after a neutral prompt and after the owl and a control
animal's context, and splits each candidate set into disjoint categories by the owl-specific
shift (Increased, Decreased, Unchanged) plus a Random null matched to Increased on baseline
frequency; phase 2 measures P(owl) under 'You love the number N' for every categorised number
(and under non-number words, and all numbers of a category at once); phase 3 describes it by
digit length (methods: `run`, statistics: `analysis`, definitions: `sublens.entanglement`).
The claims are recorded by the run and re-decided in `sublens.report.sections.entanglement`.

The package, one module per concern (the pattern of every experiment package):
- `config`: `EntanglementConfig` and `EntanglementPrompts`, every field documented;
- `run`: `execute(config, run)`, the methods in order (the stages of the study);
- `study_prompts`, `teachers`, `measuring`: the fixed prompts, the fine-tuned teachers of the
  tuned sets, and the measuring helpers the stages call;
- `console`: the report printed at the end of a run (`report_lines`, `print_report`);
- `categorising`: phase 1 on one candidate set, its table, categories and description;
- `analysis`: ratios, statistics and claims of the measured tables (no model);
- `figures`: the figures, drawn from the results and numbers.parquet;
- `results`: `EntanglementResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too: the report reads
`sublens.experiments.entanglement.results` and must not import torch through `run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.entanglement.analysis import (
        DEFINITIONS,
        LABELS,
        distinct_orders,
        length_statistics,
        rarity_warnings,
        set_statistics,
        study_claims,
    )
    from sublens.experiments.entanglement.config import (
        DEFAULT_BIAS_SYSTEM,
        DEFAULT_CUMULATIVE_SYSTEM,
        DEFAULT_NUMBER_SYSTEM,
        EntanglementConfig,
        EntanglementPrompts,
    )
    from sublens.experiments.entanglement.console import print_report, report_lines
    from sublens.experiments.entanglement.measuring import candidate_sets
    from sublens.experiments.entanglement.results import EntanglementResults
    from sublens.experiments.entanglement.run import execute, run_study
    from sublens.experiments.entanglement.study_prompts import (
        bias_system,
        check_answer_words,
        shipped_template_words,
    )

    EXPERIMENT: Experiment

SUMMARY = "Token entanglement, phases 1-3: disjoint number categories, null controls, bias ratios"

# public name -> its module in this package
_EXPORTS = {
    "EntanglementConfig": "config",
    "EntanglementPrompts": "config",
    "DEFAULT_BIAS_SYSTEM": "config",
    "DEFAULT_NUMBER_SYSTEM": "config",
    "DEFAULT_CUMULATIVE_SYSTEM": "config",
    "EntanglementResults": "results",
    "execute": "run",
    "run_study": "run",
    "bias_system": "study_prompts",
    "candidate_sets": "measuring",
    "check_answer_words": "study_prompts",
    "shipped_template_words": "study_prompts",
    "report_lines": "console",
    "print_report": "console",
    "DEFINITIONS": "analysis",
    "LABELS": "analysis",
    "distinct_orders": "analysis",
    "set_statistics": "analysis",
    "study_claims": "analysis",
    "rarity_warnings": "analysis",
    "length_statistics": "analysis",
}

__all__ = [
    "DEFAULT_BIAS_SYSTEM",
    "DEFAULT_CUMULATIVE_SYSTEM",
    "DEFAULT_NUMBER_SYSTEM",
    "DEFINITIONS",
    "EXPERIMENT",
    "LABELS",
    "EntanglementConfig",
    "EntanglementPrompts",
    "EntanglementResults",
    "bias_system",
    "candidate_sets",
    "check_answer_words",
    "distinct_orders",
    "execute",
    "length_statistics",
    "print_report",
    "rarity_warnings",
    "report_lines",
    "run_study",
    "set_statistics",
    "shipped_template_words",
    "study_claims",
]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.entanglement.config import EntanglementConfig
    from sublens.experiments.entanglement.run import execute

    return Experiment("entanglement", SUMMARY, EntanglementConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
