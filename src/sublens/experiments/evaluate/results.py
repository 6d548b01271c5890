"""What an evaluate run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` after every measured condition (``partial`` true until the end); the
tables (`sublens.tables`) and `sublens.api.load_run` read it. Fields default to None (or
empty) only where a results.json may lack them: ``sampled`` (sampling off), ``comparisons``
and ``tables`` (a partial run: written at the end).
"""

from __future__ import annotations

from pydantic import Field

from sublens.result_records import Comparison, PerplexityRecord, ProbabilityRecord, SampledRecord
from sublens.results import Sparse, SparseResults


class Condition(Sparse):
    """One model under one system prompt: its preference (`evaluate_preference`, flattened in)
    and the model's perplexity (the same for all its system prompts: measured without one)."""

    model: str  # the model spec
    system: str  # the system prompt's name (a key of the config's systems)
    perplexity: PerplexityRecord | None  # None: perplexity disabled
    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # None: sampling disabled (samples_per_question 0)


class EvaluateResults(SparseResults):
    schema_version: int = 1
    trait: str
    reference: str  # the first condition: what every other one is compared with
    partial: bool
    conditions: dict[str, Condition]  # by label, in the order measured
    comparisons: dict[str, Comparison] = Field(default_factory=dict)  # every later condition over the reference
    tables: list[str] = Field(default_factory=list)  # the parquet tables (sublens.tables)
