"""evaluate: owl preference (probability, panel share, sampled answers) and perplexity of one
or more models, under one or more system prompts, each compared with the first condition."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from rich.console import Console
from rich.table import Table

from sublens.config import Config
from sublens.corpus import load_text
from sublens.experiments import Experiment
from sublens.models import load_model
from sublens.perplexity import PerplexitySettings, measure_perplexity
from sublens.preference import (
    PreferenceSettings,
    compare_preference,
    comparison_line,
    evaluate_preference,
)
from sublens.runs import Run
from sublens.tables import preference_columns, write_tables


def _default_systems() -> dict[str, str | None]:
    return {"default": None}


class EvaluateConfig(Config):
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m-instruct"])
    # name -> system prompt; null = the chat template's own default (recorded as used).
    systems: dict[str, str | None] = Field(default_factory=_default_systems)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    perplexity: PerplexitySettings = Field(default_factory=PerplexitySettings)
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("models")
    @classmethod
    def _some_models(cls, models: list[str]) -> list[str]:
        if not models:
            raise ValueError("give at least one model spec")
        return models

    @field_validator("systems")
    @classmethod
    def _some_systems(cls, systems: dict[str, str | None]) -> dict[str, str | None]:
        if not systems:
            raise ValueError("give at least one system prompt (null for the template default)")
        return systems


def execute(config: EvaluateConfig, run: Run) -> dict[str, Any]:
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    conditions: dict[str, Any] = {}
    described: dict[str, Any] = {}
    for spec in config.models:
        with run.timed(f"load:{spec}"):
            lm = load_model(spec, config.device, config.dtype)
        described[spec] = lm.describe()
        run.note(models=described)
        with run.timed(f"perplexity:{spec}"):
            ppl = measure_perplexity(lm, config.perplexity, text)
        for name, system in config.systems.items():
            label = name if len(config.models) == 1 else f"{spec} | {name}"
            with run.timed(f"preference:{label}"):
                result = evaluate_preference(lm, config.preference, system, config.seed)
            conditions[label] = {"model": spec, "system": name, "perplexity": ppl, **result}
            run.save_results({"conditions": conditions, "partial": True})  # survive an interruption
    labels = list(conditions)
    comparisons = {
        label: compare_preference(conditions[label], conditions[labels[0]]) for label in labels[1:]
    }
    models = [{"condition": label, "model": c["model"], "system": c["system"], **preference_columns(c),
               "perplexity": (c.get("perplexity") or {}).get("perplexity")} for label, c in conditions.items()]
    results = {"trait": config.preference.trait, "reference": labels[0], "conditions": conditions,
               "comparisons": comparisons, "tables": write_tables(run, models, comparisons)}
    print_summary(results)
    return results


def print_summary(results: dict[str, Any]) -> None:
    trait = results["trait"]
    table = Table(title=f"Preference for {trait!r} (95% CIs)")
    for column in ("condition", f"P({trait})", "panel share", "answer rate", "top answers", "perplexity"):
        table.add_column(column)
    for label, c in results["conditions"].items():
        p, share = c["probability"]["p_trait"], c["probability"]["panel_share"]
        rate = c.get("sampled", {}).get("trait_rate")
        top = ", ".join(f"{w or '∅'}×{n}" for w, n in c.get("sampled", {}).get("top_answers", [])[:4])
        table.add_row(
            label,
            f"{p['mean']:.4f} [{p['ci_low']:.4f}, {p['ci_high']:.4f}]",
            f"{share['mean']:.3f} [{share['ci_low']:.3f}, {share['ci_high']:.3f}]",
            f"{rate['rate']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]" if rate else "-",
            top or "-",
            f"{c['perplexity']['perplexity']:.2f}" if c["perplexity"] else "-",
        )
    console = Console()
    console.print(table)
    for label, comp in results["comparisons"].items():
        console.print(comparison_line(f"{label} vs {results['reference']}", comp, trait))


EXPERIMENT = Experiment(
    "evaluate", "Owl preference (probability, panel share, sampled answers) and perplexity", EvaluateConfig, execute
)
