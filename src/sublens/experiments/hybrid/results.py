"""What a hybrid run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` (after every measured hybrid with ``partial``, complete at the end),
read by the report section `sublens.report.sections.hybrid` and its claims code with
`load_results`.

A key the run writes only in some cases stays absent in the other cases, as before the
results were typed: such fields are listed in the record's ``sparse`` and written only when
the run set them (or when they were in the results.json read), so absent and null stay
different. They are:
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

from typing import Any, ClassVar, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from sublens.results import Record, Results

Source = Literal["base", "biased"]
Direction = Literal["into_base", "into_biased"]
DIRECTIONS: tuple[Direction, Direction] = ("into_base", "into_biased")
BiasMetric = Literal["share", "p_trait"]
MetricKey = Literal["share_ratio", "p_trait_ratio"]
METRIC_KEYS: dict[BiasMetric, MetricKey] = {"share": "share_ratio", "p_trait": "p_trait_ratio"}


class Sparse(Record):
    """A record with keys written only when set (``sparse``): absent stays absent, null stays null."""

    sparse: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k not in self.sparse or k in self.model_fields_set}

    def present(self) -> dict[str, Any]:
        """The fields as keyword arguments, sparse ones only when set (to build another record)."""
        return {k: getattr(self, k) for k in type(self).model_fields
                if k not in self.sparse or k in self.model_fields_set}


# ---- one measurement (sublens.preference.evaluate_preference, sublens.perplexity) ------------
class Summary(Sparse):
    """`sublens.stats.summarize` of per-question values (NaN bounds: too few for an interval)."""

    sparse = frozenset({"ci"})
    n: int
    mean: float
    median: float
    sd: float
    ci_low: float
    ci_high: float
    ci: str | None = None  # how the interval was made; not recorded by older runs


class Rate(Record):
    """A count among the sampled answers, its rate and Wilson 95% interval."""

    count: int
    rate: float
    ci_low: float
    ci_high: float


class AnimalRecord(Record):
    p_word: Summary
    p_first_token: float
    n_tokens: int


class PerQuestion(Record):
    p_word: list[list[float]]  # [question, animal]; the trait first
    share: list[float]  # [question]: the trait's share of the panel
    animals: list[str]


class ProbabilityRecord(Record):
    """P(animal) at the prefilled answer, per question and summarised."""

    system_prompt_used: str | None
    system_source: str
    prefill: str
    n_questions: int
    trait: str
    p_trait: Summary
    p_trait_first_token: float
    panel_share: Summary
    animals: dict[str, AnimalRecord]
    per_question: PerQuestion


class SamplingRecord(Sparse):
    sparse = frozenset({"sampler"})
    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int
    seed: int
    prefill: str
    sampler: str | None = None  # not recorded by older runs


class TraitLike(Record):
    """Sampled answers whose first word starts with the trait ('owl', 'owls', 'owlish'), by form."""

    count: int
    rate: float  # NaN without answers
    ci_low: float
    ci_high: float
    forms: dict[str, int]


class SampledRecord(Record):
    """One-word answers sampled per question (ordered by question, then sample)."""

    n_questions: int
    samples_per_question: int
    n_answers: int
    sampling: SamplingRecord
    trait_rate: Rate
    rates: dict[str, Rate]
    top_answers: list[tuple[str, int]]
    answers: list[str]
    trait_like: TraitLike


class PerplexityRecord(Record):
    perplexity: float
    mean_nll: float
    tokens: int
    windows: int


class NextToken(Record):
    """The mean next-token distribution at the prefilled answer over the preference questions."""

    top_tokens: list[tuple[str, float]]  # (token text, probability), most likely first
    trait_like_mass: float  # of the tokens spelling the trait word or one of its forms
    trait_like_tokens: list[tuple[str, float]]  # the five likeliest of them (probability > 0)


class Measurement(Sparse):
    """One model as it is (a hybrid loaded into the working model), as `run.measure` takes it."""

    sparse = frozenset({"sampled", "next_token"})
    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # absent: sampling off (samples_per_question 0)
    perplexity: PerplexityRecord | None  # null: perplexity off
    next_token: NextToken | None = None  # absent: top_tokens 0


# ---- comparisons (sublens.preference.compare_preference) --------------------------------------
class RatioEstimate(Sparse):
    """test / reference paired by question: geometric mean over questions, Student-t interval
    of the mean log ratio (a paired bootstrap in older runs)."""

    sparse = frozenset({"log_ratios", "ci"})
    ratio: float
    ci_low: float | None  # None: too few questions for an interval
    ci_high: float | None
    n_questions: int
    log_ratios: list[float] | None = None  # not recorded by older runs
    ci: str | None = None  # not recorded by older runs
    underpowered: bool


class RateDifference(Record):
    """Answer rate test minus reference (bootstrap interval, Fisher's exact p)."""

    difference: float
    ci_low: float
    ci_high: float
    p_fisher: float
    underpowered: bool


class Comparison(Sparse):
    sparse = frozenset({"rate_difference"})
    p_trait_ratio: RatioEstimate
    share_ratio: RatioEstimate
    rate_difference: RateDifference | None = None  # absent: not sampled

    def metric(self, key: MetricKey) -> RatioEstimate:
        return self.share_ratio if key == "share_ratio" else self.p_trait_ratio


# ---- one hybrid --------------------------------------------------------------------------------
class Swap(Record):
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


class BiasFractions(Record):
    """log(m_hybrid / m_base) / log(m_biased / m_base) for both metrics (NaN: no bias axis)."""

    share: float
    p_trait: float

    def of(self, metric: BiasMetric) -> float:
        return self.share if metric == "share" else self.p_trait


class Hybrid(Sparse):
    """One measured hybrid: what it is, its measurement, and how it compares with the two models."""

    sparse = frozenset({"sampled", "next_token", "same_weights_as", "vs_base", "vs_biased", "bias_fractions"})
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
class Untied(Record):
    base: bool  # True: its LM head was tied to the input embedding and got its own copy
    biased: bool
    note: str


class GroupRecord(Record):
    tensors: int
    parameters: int
    layered: bool
    example_names: list[str]


class GroupsRecord(Record):
    """`sublens.hybrid.ComponentGroups.describe`: the partition of the parameters."""

    layer_norms: Literal["attach", "separate"]
    norm_placement: dict[str, str]  # layer 0's residual norms -> attention | mlp
    groups: dict[str, GroupRecord]  # in group order


class WeightChange(Record):
    """||W_biased - W_base|| / ||W_base|| per group ('all') and per layer range ('L0-9')."""

    relative_l2: dict[str, float]
    tensors: int
    tensors_differing: int


class PlanEntry(Record):
    name: str
    aliases: list[str]
    start: Source
    bring: list[str]
    description: str


class BiasAxis(Record):
    """The biased model against the base on the bias metric: the axis of every bias fraction."""

    metric: MetricKey
    biased_vs_base: RatioEstimate
    note: str


class HeadSwap(Record):
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


class PatchTokens(Record):
    """(word, first token id, token text) of the trait and of the foil."""

    target: tuple[str, int, str]
    foil: tuple[str, int, str]


class LogitDifference(Record):
    """Per question: logit(target) - logit(foil) at the prefilled answer."""

    base: list[float]
    biased: list[float]
    patched: dict[Direction, dict[str, dict[str, list[float]]]]  # [direction][component][layers label]


class Gap(Record):
    """The biased - base logit-difference gap: mean over questions, Student-t interval."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_questions: int
    per_question: list[float]


class PatchCell(Record):
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

    sparse = frozenset({"sites", "forward_passes", "seconds", "seconds_per_question"})
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


class HybridResults(Results, Sparse):
    sparse = frozenset({"checkpoints", "partial", "system_prompt_used", "bias_axis", "lm_head_swap",
                        "patching", "table", "figures"})
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
