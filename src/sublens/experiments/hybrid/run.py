"""hybrid: where is the bias? LM-head swaps and a component transplant matrix, no training.

1. Two models of one architecture are loaded: the *base* model and a *biased* one (by default
   the biased teacher of the newest finished `teacher` run). Both are untied first (tied
   embeddings would make an LM-head swap silently swap the input embeddings as well), then
   held in memory as weight states; each hybrid is loaded into one working model, verified
   name by name, measured and undone (`sublens.hybrid`).
2. The hybrids (`plan_hybrids`): ``base`` and ``biased`` themselves (references); the LM-head
   swap, ``hybrid1`` = biased body + base LM head and ``hybrid2`` = base body + biased LM head
   ("body" = everything but the LM head, input embeddings included); the transplant matrix,
   ``base+biased.G`` (the base model with the biased model's group G) and ``biased+base.G`` for
   each group and each per-depth-range group (``mlp[0:10]``...), so the bias can be located in
   depth; any extra hybrid of the config. Identical weight mixtures are measured once.
3. Each hybrid is measured (`measure`): `evaluate_preference` (P(trait) at the prefilled answer,
   panel share, sampled answer rate, top answers) under the configured system prompt,
   `measure_perplexity` (a gibberish hybrid shows as such), the top next tokens at the
   prefilled answer and the mass of trait-like tokens ("owl", "owls", "owlet"); and compared with
   the base and the biased model: its bias fraction and degradation (`analysis`).
4. Activation patching (``patching``, `sublens.patching`; on by default): per preference
   question (answer prefilled), the logit difference trait - foil (owl - dog) at the answer
   position in the base and the biased model, and with one component's outputs
   (``hook_mlp_out`` or ``hook_attn_out`` of every layer in a range: the transplant's depth
   ranges and the whole depth) taken from the other model's run of the same prompt: biased
   outputs into the base run (fraction of the gap restored) and base outputs into the biased
   run (fraction removed), Student-t CIs over questions, Holm over all cells.

No verdict is decided here: the claims (localisation.lm_head, localisation.transplant,
localisation.patching) are decided from the recorded results by
`sublens.report.sections.hybrid.decisions` through `sublens.claims`.

This module holds `execute`; the two models (`pair`), the plan (`plan`), measuring the hybrids
(`measuring`), activation patching (`activation_patching`) and the summary on the terminal
(`console`) are its sibling modules.
"""

from __future__ import annotations

import pandas as pd

from sublens.corpus import load_text
from sublens.experiments.hybrid.activation_patching import measure_patching, patching_inputs
from sublens.experiments.hybrid.analysis import bias_axis, lm_head_swap, table_rows
from sublens.experiments.hybrid.config import HybridConfig
from sublens.experiments.hybrid.console import print_summary
from sublens.experiments.hybrid.figures import make_figures
from sublens.experiments.hybrid.measuring import measure_hybrids, trait_mask
from sublens.experiments.hybrid.pair import load_pair
from sublens.experiments.hybrid.plan import first_results, layer_ranges, plan_hybrids
from sublens.experiments.hybrid.results import HybridResults
from sublens.hybrid import Transplanter, component_groups
from sublens.runs import Run, atomic_write_parquet

TABLE_FILE = "hybrids.parquet"


def execute(config: HybridConfig, run: Run) -> HybridResults:
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    pair = load_pair(config, run)
    lm = pair.lm
    groups = component_groups(lm.model, lm.adapter, config.layer_norms)
    plan = plan_hybrids(config, groups)
    ranges = layer_ranges(config, groups.n_layers)
    bench = Transplanter(lm.model, groups, pair.states)
    mask = trait_mask(lm, config)
    patch = patching_inputs(lm, config, groups.n_layers)  # its settings checked before any hybrid is measured
    results = first_results(config, pair, groups, ranges, plan)

    results = measure_hybrids(run, config, lm, bench, plan, text, mask, results)
    key = results.metric_key()
    results = results.model_copy(
        update={
            "system_prompt_used": results.hybrids["base"].probability.system_prompt_used,
            "bias_axis": bias_axis(results.hybrids, key),
            "lm_head_swap": lm_head_swap(results.hybrids, key),
        }
    )
    if patch is not None:
        with run.timed("patching"):
            results = results.model_copy(update={"patching": measure_patching(lm, config, bench, *patch)})

    rows = table_rows(results)
    atomic_write_parquet(run.artifact(TABLE_FILE), pd.DataFrame(rows))
    figures = make_figures(results, config.directions, run.path)
    results = results.model_copy(update={"table": TABLE_FILE, "figures": figures})
    print_summary(results, rows, config.claims)
    return results
