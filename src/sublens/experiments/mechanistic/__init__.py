"""mechanistic: where in the network does a number meet the animal (phase 4)?

For each number (by default the categorised numbers of an entanglement run) the final-position
residual of a number statement is compared with the bias and control statements' layer by layer;
the spike layer, its top head and every component's direct logit attribution on the
number-priming prompt are measured, and attention from the final position is read (methods:
`run`, definitions: `sublens.mechanistic`). Whether the spike layer and top heads depend on the
number's category, and whether the MLPs' attribution tracks the bias ratio beyond the total
logit difference, is tested in `analysis`; the claims are decided in
`sublens.report.sections.mechanistic`.

The package, one module per concern (the pattern of every experiment package):
- `config`: `MechanisticConfig`, every field documented;
- `run`: `execute(config, run)`, the methods in order;
- `inputs`, `measuring`, `recording`: the numbers, words and prompts, the measuring stages, and
  the per-number table, results records and artifacts that `run` writes;
- `console`: the summary printed at the end of a run (`print_summary`);
- `analysis`: the consistency statistics across numbers and the verdict (no model), with
  `association`: the category x label association test and the categories' canonical order;
- `figures`: the figures, drawn from the run directory;
- `results`: `MechanisticResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too: the report reads
`sublens.experiments.mechanistic.results` and must not import torch through `run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.mechanistic.analysis import (
        attribution_summary,
        consistency_summary,
        partial_spearman,
        spearman,
        variance_shares,
        verdict,
    )
    from sublens.experiments.mechanistic.association import category_association, category_order
    from sublens.experiments.mechanistic.config import (
        DEFAULT_NUMBERS,
        NUMBER_SYSTEM,
        AttentionSettings,
        AttributionPrompts,
        MechanisticConfig,
        NumberEntry,
        ResidualPrompts,
    )
    from sublens.experiments.mechanistic.inputs import (
        MechanisticError,
        ids_ending_the_text,
        statement_prompt,
        word_token,
    )
    from sublens.experiments.mechanistic.results import MechanisticResults
    from sublens.experiments.mechanistic.run import execute

    EXPERIMENT: Experiment

SUMMARY = "Residual similarity per layer, spike layers, head/MLP attribution, attention, consistency by category"

# public name -> its module in this package
_EXPORTS = {
    "MechanisticConfig": "config",
    "NumberEntry": "config",
    "ResidualPrompts": "config",
    "AttributionPrompts": "config",
    "AttentionSettings": "config",
    "DEFAULT_NUMBERS": "config",
    "NUMBER_SYSTEM": "config",
    "MechanisticResults": "results",
    "execute": "run",
    "word_token": "inputs",
    "statement_prompt": "inputs",
    "ids_ending_the_text": "inputs",
    "MechanisticError": "inputs",  # defined in sublens.mechanistic
    "consistency_summary": "analysis",
    "verdict": "analysis",
    "category_association": "association",
    "category_order": "association",
    "spearman": "analysis",
    "partial_spearman": "analysis",
    "attribution_summary": "analysis",
    "variance_shares": "analysis",
}

__all__ = [
    "DEFAULT_NUMBERS",
    "EXPERIMENT",
    "NUMBER_SYSTEM",
    "AttentionSettings",
    "AttributionPrompts",
    "MechanisticConfig",
    "MechanisticError",
    "MechanisticResults",
    "NumberEntry",
    "ResidualPrompts",
    "attribution_summary",
    "category_association",
    "category_order",
    "consistency_summary",
    "execute",
    "ids_ending_the_text",
    "partial_spearman",
    "spearman",
    "statement_prompt",
    "variance_shares",
    "verdict",
    "word_token",
]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.mechanistic.config import MechanisticConfig
    from sublens.experiments.mechanistic.run import execute

    return Experiment("mechanistic", SUMMARY, MechanisticConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
