"""pruning: does the owl bias survive with fewer attention heads?

Attention heads of the biased model are ranked by their attention entropy on owl-context
prompts; for each kept fraction the lowest-entropy heads (``entropy``), the highest
(``reverse``) or seeded random ones (``random``) are kept, and the SAME heads are removed
from the unbiased base model, the matched control. Owl preference and perplexity of every
masked model give the bias's retention, own and base-controlled (methods: `run`, statistics:
`analysis`); the claims are decided in `sublens.report.sections.pruning`.

The package, one module per concern (the pattern of every experiment package):
- `config`: `PruningConfig`, every field documented;
- `run`: `execute(config, run)`, the methods in order, and the measuring helpers;
- `analysis`: the retention statistics of a cell (numpy, no model);
- `figures`: the figures, drawn from the results alone;
- `results`: `PruningResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too: the report reads
`sublens.experiments.pruning.results` and must not import torch through `run` or `config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.pruning.analysis import (
        controlled_rate_retention,
        pooled_preference,
        rate_retention,
        summarize_step,
    )
    from sublens.experiments.pruning.config import BiasPrompts, PruningConfig
    from sublens.experiments.pruning.results import PruningResults
    from sublens.experiments.pruning.run import biased_spec, check_base, execute, measure

    EXPERIMENT: Experiment

SUMMARY = "Entropy-based attention-head pruning: bias retention and perplexity vs kept heads"

# public name -> its module in this package
_EXPORTS = {
    "PruningConfig": "config",
    "BiasPrompts": "config",
    "PruningResults": "results",
    "execute": "run",
    "measure": "run",
    "biased_spec": "run",
    "check_base": "run",
    "summarize_step": "analysis",
    "pooled_preference": "analysis",
    "rate_retention": "analysis",
    "controlled_rate_retention": "analysis",
}

__all__ = [
    "EXPERIMENT",
    "BiasPrompts",
    "PruningConfig",
    "PruningResults",
    "biased_spec",
    "check_base",
    "controlled_rate_retention",
    "execute",
    "measure",
    "pooled_preference",
    "rate_retention",
    "summarize_step",
]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.pruning.config import PruningConfig
    from sublens.experiments.pruning.run import execute

    return Experiment("pruning", SUMMARY, PruningConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
