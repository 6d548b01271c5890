"""evaluate: owl preference (probability, panel share, sampled answers) and perplexity of one
or more models, under one or more system prompts, each condition compared with the first.

Each model is loaded once; its perplexity is measured once (it has no system prompt), its
preference under every system prompt. The results are saved after every condition, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sublens.corpus import load_text
from sublens.experiments.evaluate.config import EvaluateConfig
from sublens.experiments.evaluate.results import Condition, EvaluateResults
from sublens.models import LoadedModel, load_model
from sublens.perplexity import measure_perplexity
from sublens.preference import compare_preference, comparison_line, evaluate_preference
from sublens.result_records import Comparison
from sublens.runs import Run
from sublens.tables import preference_columns, write_tables


def execute(config: EvaluateConfig, run: Run) -> EvaluateResults:
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    results = EvaluateResults(trait=config.preference.trait, reference=config.reference(), partial=True, conditions={})
    for spec in config.models:
        results = measure_model(run, spec, config, text, results)
    comparisons = compare_with_reference(results)
    tables = write_tables(run, model_rows(results), {k: c.model_dump() for k, c in comparisons.items()})
    results = results.model_copy(update={"comparisons": comparisons, "tables": tables, "partial": False})
    print_summary(results)
    return results


def measure_model(run: Run, spec: str, config: EvaluateConfig, text: str, results: EvaluateResults) -> EvaluateResults:
    """One model: loaded, its perplexity measured once (no system prompt), its preference under
    every system prompt; the results saved after each, so an interruption keeps them."""
    with run.timed(f"load:{spec}"):
        lm = load_model(spec, config.device, config.dtype)
    run.note(models={**(run.record.get("models") or {}), spec: lm.describe()})
    with run.timed(f"perplexity:{spec}"):
        perplexity = measure_perplexity(lm, config.perplexity, text)
    for name, system in config.systems.items():
        label = config.label(spec, name)
        with run.timed(f"preference:{label}"):
            condition = measure_condition(lm, spec, name, system, perplexity, config)
        results = results.model_copy(update={"conditions": {**results.conditions, label: condition}})
        run.save_results(results)
    return results


def measure_condition(
    lm: LoadedModel, spec: str, name: str, system: str | None, perplexity: dict[str, Any] | None, config: EvaluateConfig
) -> Condition:
    """The model's preference under one system prompt, with its perplexity."""
    preference = evaluate_preference(lm, config.preference, system, config.seed)
    return Condition.model_validate({"model": spec, "system": name, "perplexity": perplexity, **preference})


def compare_with_reference(results: EvaluateResults) -> dict[str, Comparison]:
    """Every condition after the first over the first (`compare_preference`, paired per question)."""
    reference = results.conditions[results.reference].model_dump()
    return {
        label: Comparison.model_validate(compare_preference(c.model_dump(), reference))
        for label, c in results.conditions.items()
        if label != results.reference
    }


def model_rows(results: EvaluateResults) -> list[dict[str, Any]]:
    """One row per condition for models.parquet: its preference columns and perplexity."""
    return [
        {
            "condition": label,
            "model": c.model,
            "system": c.system,
            **preference_columns(c.model_dump()),
            "perplexity": c.perplexity.perplexity if c.perplexity else None,
        }
        for label, c in results.conditions.items()
    ]


def print_summary(results: EvaluateResults) -> None:
    trait = results.trait
    table = Table(title=f"Preference for {trait!r} (95% CIs)")
    for column in ("condition", f"P({trait})", "panel share", "answer rate", "top answers", "perplexity"):
        table.add_column(column)
    for label, c in results.conditions.items():
        p, share = c.probability.p_trait, c.probability.panel_share
        rate = c.sampled.trait_rate if c.sampled else None
        top = ", ".join(f"{w or '∅'}×{n}" for w, n in (c.sampled.top_answers[:4] if c.sampled else []))
        table.add_row(
            label,
            f"{p.mean:.4f} [{p.ci_low:.4f}, {p.ci_high:.4f}]",
            f"{share.mean:.3f} [{share.ci_low:.3f}, {share.ci_high:.3f}]",
            f"{rate.rate:.3f} [{rate.ci_low:.3f}, {rate.ci_high:.3f}]" if rate else "-",
            top or "-",
            f"{c.perplexity.perplexity:.2f}" if c.perplexity else "-",
        )
    console = Console()
    console.print(table)
    for label, comparison in results.comparisons.items():
        console.print(comparison_line(f"{label} vs {results.reference}", comparison.model_dump(), trait))
