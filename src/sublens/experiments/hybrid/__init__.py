"""hybrid: where is the bias? LM-head swaps and a component transplant matrix, no training.

Two models of one architecture, the base model and a biased one (by default the biased
teacher of the newest finished `teacher` run), mixed group by group: the LM-head swap
(biased body + base head and the reverse), a transplant matrix (one group, whole or per depth
range, brought from the other model in each direction) and activation patching of MLP and
attention outputs. Each hybrid's owl preference, perplexity and next tokens give its *bias
fraction*, log(m_hybrid / m_base) / log(m_biased / m_base): 1 = as biased as the biased model,
0 = as the base (methods: `run`, computations: `analysis`); the claims are decided in
`sublens.report.sections.hybrid`.

The package, one module per concern (the pattern of every experiment package):
- `config`: `HybridConfig`, every field documented;
- `run`: `execute(config, run)`, the methods in order;
- `pair`, `plan`, `measuring`, `activation_patching`: the two models, the plan of hybrids,
  measuring the hybrids, and activation patching, the stages `run` calls;
- `console`: the summary printed at the end of a run (`print_summary`);
- `analysis`: comparisons, bias fractions, degradation and the table rows (no model);
- `figures`: the heatmap, drawn from the results alone;
- `results`: `HybridResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too: the report reads
`sublens.experiments.hybrid.results` and must not import torch through `run` or `config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.hybrid.activation_patching import (
        measure_patching,
        patching_prompts,
        patching_ranges,
    )
    from sublens.experiments.hybrid.analysis import bias_fraction, table_rows, trait_like_answers
    from sublens.experiments.hybrid.config import ExtraHybrid, HybridConfig, PatchingSettings
    from sublens.experiments.hybrid.measuring import measure, trait_like_mask
    from sublens.experiments.hybrid.pair import default_biased
    from sublens.experiments.hybrid.plan import layer_ranges, plan_hybrids
    from sublens.experiments.hybrid.results import HybridResults
    from sublens.experiments.hybrid.run import execute

    EXPERIMENT: Experiment

SUMMARY = "LM-head swaps and a component transplant matrix between a biased and the base model"

# public name -> its module in this package
_EXPORTS = {
    "HybridConfig": "config",
    "ExtraHybrid": "config",
    "PatchingSettings": "config",
    "HybridResults": "results",
    "execute": "run",
    "default_biased": "pair",
    "layer_ranges": "plan",
    "plan_hybrids": "plan",
    "measure": "measuring",
    "trait_like_mask": "measuring",
    "patching_ranges": "activation_patching",
    "patching_prompts": "activation_patching",
    "measure_patching": "activation_patching",
    "bias_fraction": "analysis",
    "trait_like_answers": "analysis",
    "table_rows": "analysis",
}

__all__ = [
    "EXPERIMENT",
    "ExtraHybrid",
    "HybridConfig",
    "HybridResults",
    "PatchingSettings",
    "bias_fraction",
    "default_biased",
    "execute",
    "layer_ranges",
    "measure",
    "measure_patching",
    "patching_prompts",
    "patching_ranges",
    "plan_hybrids",
    "table_rows",
    "trait_like_answers",
    "trait_like_mask",
]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.hybrid.config import HybridConfig
    from sublens.experiments.hybrid.run import execute

    return Experiment("hybrid", SUMMARY, HybridConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
