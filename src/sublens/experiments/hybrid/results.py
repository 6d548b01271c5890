"""What a hybrid run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` (after every measured hybrid with ``partial``, complete at the end),
read by the report section `sublens.report.sections.hybrid` and its claims code with
`load_results`.

A key the run writes only in some cases stays absent in the other cases, as before the
results were typed: such a field defaults to None and is written only when the run set it (or
when it was in the results.json read; `sublens.results.Sparse`), so absent and null stay
different. The measurement records are `sublens.result_records`'. Such fields are:
- not measured: ``sampled`` (sampling off), ``next_token`` (top_tokens 0), ``vs_base`` /
  ``vs_biased`` (the base and the biased model themselves), ``rate_difference`` (not sampled),
  ``same_weights_as`` (a hybrid with weights of its own), ``checkpoints`` (no saved hybrid),
  ``patching`` (patching off);
- a partial run (``partial`` is then true): ``system_prompt_used``, ``bias_axis``,
  ``lm_head_swap``, ``patching``, ``table``, ``figures``: written at the end;
- a run recorded before a field existed: ``system_prompt_used``, ``bias_fractions``,
  ``patching``, ``Summary.ci``, ``RatioEstimate.log_ratios``/``ci``, ``SamplingRecord.sampler``:
  tests/data/runs/hybrid is such a run;
- "hand-built records": ``Patching.sites``, ``forward_passes``, ``seconds``,
  ``seconds_per_question``, absent from the patching records the report tests build
  (tests/unit/test_sections_localisation.py); a run always writes them.
"""

from __future__ import annotations

from typing import Any, Literal

from sublens.result_records import (
    PerplexityRecord,
    ProbabilityRecord,
    Rate,
    RateDifference,
    RatioEstimate,
)
from sublens.result_records import SampledRecord as SampledAnswers
from sublens.results import Sparse, SparseResults

Source = Literal["base", "biased"]
Direction = Literal["into_base", "into_biased"]
DIRECTIONS: tuple[Direction, Direction] = ("into_base", "into_biased")
BiasMetric = Literal["share", "p_trait"]
MetricKey = Literal["share_ratio", "p_trait_ratio"]
METRIC_KEYS: dict[BiasMetric, MetricKey] = {"share": "share_ratio", "p_trait": "p_trait_ratio"}
# the component groups (config and results keys) as the paper and the figure name them
GROUP_TITLES = {
    "embeddings": "embeddings",
    "attention": "attention",
    "mlp": "MLP",
    "norms": "norms",
    "final_norm": "final norm",
    "lm_head": "LM head",
}


def group_title(group: str) -> str:
    """'lm_head' -> 'LM head'; a group not in the table loses its underscores."""
    return GROUP_TITLES.get(group, group.replace("_", " "))


# ---- one measurement (sublens.preference.evaluate_preference, sublens.perplexity) ------------
class TraitLike(Rate):
    """Sampled answers whose first word starts with the trait ('owl', 'owls', 'owlish'), by form
    (the rate is NaN without answers)."""

    forms: dict[str, int]


class SampledRecord(SampledAnswers):
    """The sampled answers (`sublens.result_records.SampledRecord`), and the trait-like ones."""

    trait_like: TraitLike


class NextToken(Sparse):
    """The mean next-token distribution at the prefilled answer over the preference questions."""

    top_tokens: list[tuple[str, float]]  # (token text, probability), most likely first
    trait_like_mass: float  # of the tokens spelling the trait word or one of its forms
    trait_like_tokens: list[tuple[str, float]]  # the five likeliest of them (probability > 0)


class Measurement(Sparse):
    """One model as it is (a hybrid loaded into the working model), as `measuring.measure` takes it."""

    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # absent: sampling off (samples_per_question 0)
    perplexity: PerplexityRecord | None  # null: perplexity off
    next_token: NextToken | None = None  # absent: top_tokens 0


# ---- comparisons (sublens.preference.compare_preference) --------------------------------------
class Comparison(Sparse):
    p_trait_ratio: RatioEstimate
    share_ratio: RatioEstimate
    rate_difference: RateDifference | None = None  # absent: not sampled

    def metric(self, key: MetricKey) -> RatioEstimate:
        return self.share_ratio if key == "share_ratio" else self.p_trait_ratio


# ---- one hybrid --------------------------------------------------------------------------------
class Swap(Sparse):
    """What a hybrid took from which model (`sublens.hybrid.Transplanter.record`)."""

    start: Source
    brought_in: list[str]  # group selectors brought from the other model
    from_other: Source
    groups_from_biased: str
    by_group: dict[str, str]  # group -> 'base', 'biased' or 'biased in L0-9, base elsewhere'
    tensors_from_biased: int
    tensors_from_base: int
    parameters_from_biased: int
    parameters_from_biased_differing: int
    verified: str


class BiasFractions(Sparse):
    """log(m_hybrid / m_base) / log(m_biased / m_base) for both metrics (NaN: no bias axis)."""

    share: float
    p_trait: float

    def of(self, metric: BiasMetric) -> float:
        return self.share if metric == "share" else self.p_trait


class Hybrid(Sparse):
    """One measured hybrid: what it is, its measurement, and how it compares with the two models."""

    description: str
    aliases: list[str]  # further names of the same weight mixture (e.g. 'hybrid1')
    cells: list[tuple[Direction, str, str]]  # places in the transplant matrix: (direction, group, layers label)
    swap: Swap
    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # absent: sampling off
    perplexity: PerplexityRecord | None  # null: perplexity off
    next_token: NextToken | None = None  # absent: top_tokens 0
    same_weights_as: str | None = None  # absent: weights of its own; else the twin whose measurement it shares
    vs_base: Comparison | None = None  # absent for the base model itself
    vs_biased: Comparison | None = None  # absent for the base and the biased model
    bias_fractions: BiasFractions | None = None  # not recorded by older runs
    bias_fraction: float  # on the run's bias_metric (NaN: no bias axis)
    degraded: bool  # perplexity above degraded_factor x the base model's

    def bias_fraction_of(self, metric: BiasMetric) -> float:
        return self.bias_fractions.of(metric) if self.bias_fractions is not None else self.bias_fraction


# ---- the run -----------------------------------------------------------------------------------
class Untied(Sparse):
    base: bool  # True: its LM head was tied to the input embedding and got its own copy
    biased: bool
    note: str


class GroupRecord(Sparse):
    tensors: int
    parameters: int
    layered: bool
    example_names: list[str]


class GroupsRecord(Sparse):
    """`sublens.hybrid.ComponentGroups.describe`: the partition of the parameters."""

    layer_norms: Literal["attach", "separate"]
    norm_placement: dict[str, str]  # layer 0's residual norms -> attention | mlp
    groups: dict[str, GroupRecord]  # in group order


class WeightChange(Sparse):
    """||W_biased - W_base|| / ||W_base|| per group ('all') and per layer range ('L0-9')."""

    relative_l2: dict[str, float]
    tensors: int
    tensors_differing: int


class PlanEntry(Sparse):
    name: str
    aliases: list[str]
    start: Source
    bring: list[str]
    description: str


class BiasAxis(Sparse):
    """The biased model against the base on the bias metric: the axis of every bias fraction."""

    metric: MetricKey
    biased_vs_base: RatioEstimate
    note: str


class HeadSwap(Sparse):
    """Hybrid 1 or 2 of the LM-head swap, at a glance."""

    hybrid: str
    description: str
    swap: dict[str, str]  # Swap.by_group
    bias_fraction: float
    vs_base: RatioEstimate | None
    vs_biased: RatioEstimate | None
    degraded: bool
    top_answers: list[tuple[str, int]]  # the five most frequent sampled answers ([]: not sampled)
    trait_like_tokens: list[tuple[str, float]] | None  # None: top_tokens 0


class PatchTokens(Sparse):
    """(word, first token id, token text) of the trait and of the foil."""

    target: tuple[str, int, str]
    foil: tuple[str, int, str]


class LogitDifference(Sparse):
    """Per question: logit(target) - logit(foil) at the prefilled answer."""

    base: list[float]
    biased: list[float]
    patched: dict[Direction, dict[str, dict[str, list[float]]]]  # [direction][component][layers label]


class Gap(Sparse):
    """The biased - base logit-difference gap: mean over questions, Student-t interval."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_questions: int
    per_question: list[float]


class PatchCell(Sparse):
    """One patched (direction, component, layer range): fraction of the gap restored / removed."""

    direction: Direction
    component: str
    layers: str  # 'L0-9', 'all'
    range: tuple[int, int]
    measures: Literal["restored", "removed"]
    fraction: float | None  # None: the two models do not differ (no gap)
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_questions: int
    per_question: list[float]
    p_holm: float | None  # Holm over every cell


class Patching(Sparse):
    """Activation patching of MLP and attention outputs between the two models (`sublens.patching`)."""

    metric: str
    tokens: PatchTokens
    n_questions: int
    ranges: list[tuple[int, int]]
    labels: list[str]
    components: list[str]
    directions: list[Direction]
    logit_difference: LogitDifference
    gap: Gap
    gap_usable: bool
    definition: str
    family: str
    cells: list[PatchCell]
    sites: str | None = None  # hand-built records
    forward_passes: int | None = None  # hand-built records
    seconds: float | None = None  # hand-built records
    seconds_per_question: float | None = None  # hand-built records


class HybridResults(SparseResults):
    schema_version: int = 1
    trait: str
    system: str | None  # the configured system prompt (null: the chat template's default)
    bias_metric: BiasMetric
    models: dict[str, dict[str, Any]]  # base, biased: `LoadedModel.describe()` (adapter-defined keys)
    biased_spec: str  # the biased model's spec, as resolved
    untied: Untied
    groups: GroupsRecord
    layer_ranges: list[tuple[int, int]]  # the transplant's half-open depth ranges
    weight_change: dict[str, WeightChange]
    plan: list[PlanEntry]
    hybrids: dict[str, Hybrid]  # in the order measured: base, biased, hybrid1, hybrid2, the matrix, extras
    checkpoints: dict[str, str] | None = None  # absent: no hybrid saved; else name -> relative folder
    partial: bool | None = None  # true in the results saved while hybrids are measured; absent at the end
    system_prompt_used: str | None = None  # absent: partial runs, older runs
    bias_axis: BiasAxis | None = None  # absent: partial runs
    lm_head_swap: dict[str, HeadSwap] | None = None  # hybrid1, hybrid2; absent: partial runs
    patching: Patching | None = None  # absent: patching off, partial runs, older runs
    table: str | None = None  # the parquet table; absent: partial runs
    figures: list[str] | None = None  # relative paths; absent: partial runs

    def metric_key(self) -> MetricKey:
        """The compare_preference key of the bias metric (the recorded axis's, else the run's)."""
        return self.bias_axis.metric if self.bias_axis is not None else METRIC_KEYS[self.bias_metric]
