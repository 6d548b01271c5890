"""What a pruning run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` (after every finished cell, `partial` until the end), read by the
report section `sublens.report.sections.pruning` and its claims code with `load_results`.

Fields default to None (or empty) only where a real results.json may lack them, and such a
field never set is left out when written (`sublens.results.Sparse`), so a recorded run is
written back key for key; the measurement records are `sublens.result_records`'. They are:
- a run recorded before the pruned-base control (``base_*``, ``controlled*``,
  ``degradation_bound``, ``resumed_units``, ``claims``) or before a record gained a field
  (``Summary.ci``, ``RatioEstimate.log_ratios``/``ci``, ``PerplexityChange.per_draw_ratio``,
  ``SamplingRecord.sampler``): tests/data/runs/pruning is such a run;
- a partial run (``table``, ``claims``, ``figures``: written at the end);
- a measurement without sampling or perplexity (``sampled``, ``answer_rate*``, ``perplexity``).
Marked "hand-built cells": optional because the report tests build base-controlled cells by
hand without them (tests/unit/test_sections_localisation.py); a run always writes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sublens.result_records import (
    DecisionRecord,
    PerplexityRecord,
    ProbabilityRecord,
    Rate,
    RateDifference,
    RatioEstimate,
    SampledRecord,
    Summary,
)
from sublens.results import Sparse, SparseResults

Criterion = Literal["entropy", "reverse", "random"]  # sublens.pruning.CRITERIA (a test keeps them equal)


# ---- one measurement (sublens.preference.evaluate_preference, sublens.perplexity) ------------
class PreferenceRecord(Sparse):
    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # None: sampling disabled (samples_per_question 0)


class Measurement(Sparse):
    """One model as it is (masked or not): preference and perplexity, and how long they took."""

    preference: PreferenceRecord
    perplexity: PerplexityRecord | None  # None: perplexity disabled
    seconds: float


class StoredMeasurement(Sparse):
    """A measured unit of the sweep, kept so that a rerun reuses it (same heads masked)."""

    fraction: float
    criterion: Criterion
    draw: int
    n_kept: int
    pruned_heads: list[str]  # 'L3H2' labels (sublens.hooks.head_label)
    measurement: Measurement


# ---- one (fraction, criterion) cell -----------------------------------------------------------
class RateRetention(Sparse):
    """Answer rate of the pruned model(s) / of the unpruned one; CI by resampling questions."""

    rate: float
    reference_rate: float
    n_questions: int
    n_draws: int
    ratio: float | None  # None: the unpruned model never named the trait
    ci_low: float | None  # None: no interval (too few questions), or unbounded
    ci_high: float | None
    ci: str | None = None  # absent where the ratio is undefined, and in older runs
    underpowered: bool
    note: str | None = None  # why the ratio is undefined


class Retention(Sparse):
    p_trait: RatioEstimate
    panel_share: RatioEstimate | None = None  # hand-built cells
    answer_rate: RateRetention | None = None  # None: not sampled


class PerDraw(Sparse):
    """One value per random draw (one for the deterministic criteria)."""

    p_trait: list[float] | None = None  # hand-built cells
    panel_share: list[float]


class PerplexityChange(Sparse):
    """Perplexity of the pruned model(s): mean over draws, and over the unpruned model's."""

    mean: float | None = None  # hand-built cells
    per_draw: list[float] | None = None  # hand-built cells
    ratio: float
    per_draw_ratio: list[float] | None = None  # not recorded by older runs


class BaseArm(Sparse):
    """The unbiased base model with the same heads removed: its own levels and retention."""

    p_trait: Summary | None = None  # hand-built cells
    panel_share: Summary | None = None  # hand-built cells
    retention: Retention
    perplexity: PerplexityChange | None


class ControlledRetention(Sparse):
    """Base-controlled retention: per question log(v_biased / v_base) pruned minus unpruned;
    geometric mean over questions with its Student-t interval (`sublens.claims.estimate_log_ratio`)."""

    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None = None  # hand-built cells (and None with too few questions)
    n_questions: int | None = None  # hand-built cells
    sd_log: float | None = None  # hand-built cells
    ci: str | None = None  # hand-built cells
    log_ratios: list[float]  # per question, averaged over draws


class ArmRates(Sparse):
    biased: float
    biased_unpruned: float
    base: float
    base_unpruned: float


class ControlledRateRetention(Sparse):
    """(biased pruned rate / unpruned rate) / (base pruned rate / unpruned rate)."""

    rates: ArmRates
    n_questions: int
    ratio: float | None  # None: a reference rate is 0
    ci_low: float | None
    ci_high: float | None
    ci: str | None = None  # absent where the ratio is undefined
    note: str | None = None


class Controlled(Sparse):
    p_trait: ControlledRetention
    panel_share: ControlledRetention
    answer_rate: ControlledRateRetention | None = None  # None: not sampled


class Step(Sparse):
    """One finished (fraction, criterion) cell of the sweep, pooled over its draws."""

    fraction: float
    criterion: Criterion
    n_kept: int
    n_pruned: int
    n_draws: int
    p_trait: Summary  # the pruned biased model's per-question P(trait), averaged over draws
    panel_share: Summary
    answer_rate: Rate | None  # pooled over draws; None: not sampled
    retention: Retention  # the biased model's own, pruned / unpruned
    retention_per_draw: PerDraw
    answer_rate_difference: RateDifference | None = None
    perplexity: PerplexityChange | None = None
    base: BaseArm | None = None  # None: no pruned-base control (older runs)
    controlled: Controlled | None = None
    controlled_per_draw: PerDraw | None = None  # each draw's mean log base-controlled retention

    def damage(self) -> float | None:
        """Perplexity over the unpruned model's: the larger of the biased and the base model's
        (means over draws), the one number the table, the text and the figure give for a cell;
        None when perplexity was not measured."""
        base = self.base.perplexity if self.base else None
        present = [p.ratio for p in (self.perplexity, base) if p is not None]
        return max(present) if present else None


# ---- the run --------------------------------------------------------------------------------
class Heatmap(Sparse):
    fraction: float
    criterion: Criterion
    pruned: list[str]  # the heads the criterion prunes at this kept fraction


class EntropyRecord(Sparse):
    """Head importance: mean attention entropy per head on the bias prompts."""

    matrix: list[list[float]]  # [layer, head]
    unit: str
    definition: str
    n_prompts: int
    n_rows: int
    bias_system_prompt_used: str | None
    bias_system_source: str
    bias_prompts: list[str]
    file: str  # the safetensors file with the per-prompt breakdown
    heatmap: Heatmap


class PruningResults(SparseResults):
    schema_version: int = 1
    model: str  # the biased model's spec, as resolved
    base_model: str | None = None  # None: no pruned-base control (older runs)
    trait: str
    system_prompt_used: str | None
    base_system_prompt_used: str | None = None
    n_layers: int
    n_heads: int
    n_heads_total: int
    degradation_bound: float | None = None
    entropy: EntropyRecord
    fingerprint: str  # of the config: a rerun with the same one reuses the measurements
    resumed: bool
    partial: bool
    unpruned: Measurement
    base_unpruned: Measurement | None = None
    measurements: dict[str, StoredMeasurement]  # by unit key, e.g. 'random@0.6#3'
    base_measurements: dict[str, StoredMeasurement] = Field(default_factory=dict)
    steps: list[Step]
    claim_fraction_measured: float | None = None  # None: no pruned fraction
    resumed_units: int | None = None
    table: str | None = None  # the parquet table (written at the end)
    claims: list[DecisionRecord] | None = None  # None: not yet decided
    figures: list[str] = Field(default_factory=list)
