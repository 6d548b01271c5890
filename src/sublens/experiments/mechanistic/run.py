"""mechanistic: where in the network does a number meet the animal, and does it depend on the
number's entanglement category?

1. The numbers (given in the config, the categorised numbers of an entanglement run, or every
   two-digit number) and the model are loaded; the bias and control words must be one token.
2. Residuals: each number statement's final-position residual is compared with the bias and
   control statements' per layer (cosine difference); the spike layer is its largest rise, and
   every head and MLP is scored by its direct contribution to logit(bias) - logit(control).
3. Attribution: the number-priming prompt's logit difference is decomposed into the embedding,
   every head and every MLP (direct logit attribution), against a neutral prompt.
4. Attention from the final position of the attention prompts to the number and animal tokens.
5. Compare: are the spike layer and top heads tied to the category, do the scores track the
   bias ratio (`analysis`); the claims of the mechanistic family are decided with Holm
   (`sublens.report.sections.mechanistic.family`).

Definitions are in `sublens.mechanistic` (module docstring), prompt choices in `config`. The
results are saved once after the residual stage (``partial``) and at the end.

This module holds `execute`; the inputs and prompts (`inputs`), the measuring stages
(`measuring`), the per-number table, the results records and the artifacts (`recording`) and
the console summary (`console`) are its sibling modules.
"""

from __future__ import annotations

import pandas as pd
from safetensors.torch import save as safetensors_bytes

from sublens.experiments.mechanistic.analysis import consistency_summary, verdict
from sublens.experiments.mechanistic.config import MechanisticConfig
from sublens.experiments.mechanistic.console import print_summary
from sublens.experiments.mechanistic.figures import make_figures
from sublens.experiments.mechanistic.inputs import check_layers, numbers_to_analyse, word_token
from sublens.experiments.mechanistic.measuring import (
    Attention,
    LogitAttribution,
    Residuals,
    measure_attention,
    measure_attribution,
    measure_residuals,
)
from sublens.experiments.mechanistic.recording import (
    metadata,
    number_table,
    tensors,
    with_claims,
    with_measurements,
)
from sublens.experiments.mechanistic.results import (
    TABLE_FILE,
    TENSOR_FILE,
    Artifacts,
    Consistency,
    InputRecord,
    MechanisticResults,
    ModelRecord,
    Words,
)
from sublens.mechanistic.input_numbers import NumberItem
from sublens.models import load_model
from sublens.report.sections.mechanistic import family
from sublens.runs import Run, atomic_write_bytes, atomic_write_parquet


def execute(config: MechanisticConfig, run: Run) -> MechanisticResults:
    items, source = numbers_to_analyse(config)
    with run.timed("load"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={config.model: lm.describe()})
    check_layers(config, lm.adapter.n_layers)
    words = Words(bias=word_token(lm, config.bias), control=word_token(lm, config.control))
    results = MechanisticResults(
        model=ModelRecord.model_validate(lm.describe()),
        words=words,
        partial=True,
        input=InputRecord.model_validate({**source, "n_numbers": len(items)}),
    )

    with run.timed("residual"):
        residuals = measure_residuals(lm, config, items, words)
    run.save_results(results)
    with run.timed("attribution"):
        attribution = measure_attribution(lm, config, items, words)
    with run.timed("attention"):
        attention = measure_attention(lm, config)
    table = number_table(items, residuals, attribution, lm.adapter.n_heads)
    results = with_measurements(results, config, lm.adapter, table, residuals, attribution, attention)

    with run.timed("statistics"):
        results = _compare(results, config, table, words)
    _save_tables(run, config, items, table, residuals, attribution, attention)
    with run.timed("figures"):
        figures = make_figures(results, run.path)
    results = results.model_copy(
        update={"partial": False, "artifacts": Artifacts(table=TABLE_FILE, tensors=TENSOR_FILE, figures=figures)}
    )
    print_summary(results, config)
    return results


def _compare(
    results: MechanisticResults, config: MechanisticConfig, table: pd.DataFrame, words: Words
) -> MechanisticResults:
    """Is the spike layer or a top head tied to the entanglement category, and do the scores track
    the bias ratio: the consistency statistics and the mechanistic claims decided with Holm."""
    summary = consistency_summary(table, config.n_permutations, config.seed, config.alpha)
    consistency = Consistency.model_validate(
        {**summary, "power": config.power, "rho_of_interest": config.rho_of_interest}
    )
    decisions = family(consistency, words)
    sentences = verdict(summary, config.bias) + [d.sentence() for d in decisions.values()]
    return with_claims(results, config, consistency, decisions, sentences)


def _save_tables(
    run: Run,
    config: MechanisticConfig,
    items: list[NumberItem],
    table: pd.DataFrame,
    residuals: Residuals,
    attribution: LogitAttribution,
    attention: Attention,
) -> None:
    """The per-number table (parquet) and the measured tensors (safetensors), atomically."""
    atomic_write_parquet(run.artifact(TABLE_FILE), table)
    atomic_write_bytes(
        run.artifact(TENSOR_FILE),
        safetensors_bytes(tensors(residuals, attribution, attention), metadata(items, config)),
    )
