"""The entanglement run's results.json as a torch-free model: `EntanglementResults`.

Written by `sublens.experiments.entanglement.run` after each phase (``partial`` until the end),
read by the report section `sublens.report.sections.entanglement` with `load_results`, and
read as JSON (its ``categories``) by the mechanistic experiment and the paper chain: the shape
is the one the run wrote before it was typed, ``schema_version`` added.

Fields default to None only where a real results.json may lack them, and such a field that is
absent stays absent when the model is written (`sublens.results.Sparse`), as the run always
left it out:
- a run recorded before the control-animal context (tests/data/runs/entanglement is one):
  ``design``, ``claims``, ``prompts.phase1_control_context``, ``SetInfo.mass_control_context``
  and ``matching``, ``SetStatistics.correlation_specific_shift_log_bias_ratio``,
  ``GroupStats.specific_shift_mean`` and the medians, ``RatioSummary.ci``;
- a partial run, saved after phase 1, after the phase-2 numbers, after the template control,
  after the statistics and after cumulative priming: what comes later is absent;
- a part not measured: ``tuned_teacher`` and ``tuned_claims`` (no teacher run given: no set is
  tuned, ``SetInfo.tuned_from`` is absent everywhere), ``cumulative`` (cumulative_orders 0),
  ``all_scored`` (a set larger than score_all_max), ``prompts.phase2_number_example`` (no
  number scored); the vocab-only and
  autoregressive-only fields of `SetInfo`; ``vs_random`` of Random and of all categorised
  numbers, ``vs_template`` outside the four categories.
"""

from __future__ import annotations

from typing import Literal

from sublens.claims import Claim, ClaimSettings, Estimate, Verdict
from sublens.result_records import PromptRecord, Summary
from sublens.results import Sparse, SparseResults

Category = Literal["increased", "decreased", "unchanged", "random"]  # sublens.entanglement.CATEGORIES


# ---- the study's set-up -----------------------------------------------------------------------
class Design(Sparse):
    """How the categories were formed (runs since the control-animal context)."""

    categories_by: str  # "owl_minus_control": the owl-specific shift
    owl_specific: bool
    random: str  # "matched_to_increased": Random matched on baseline frequency
    match_caliper: float  # nats of neutral log probability


class AnswerWord(Sparse):
    """How an answer word (' owl') tokenizes after the animal prefill."""

    token_ids: list[int]
    n_tokens: int


class Prompts(Sparse):
    phase1_neutral: PromptRecord
    phase1_owl_context: PromptRecord  # the bias animal's context, whatever the bias word
    phase1_control_context: PromptRecord | None = None  # older runs
    phase2_neutral: PromptRecord
    phase2_number_example: PromptRecord | None = None  # phase 2 not reached, or no number scored
    template_example: PromptRecord | None = None  # the template control not reached


# ---- phase 1: candidate sets and categories ---------------------------------------------------
class Matching(Sparse):
    """`sublens.entanglement.matching_quality`: Random against its Increased partners."""

    n_pairs: int
    caliper: float
    median_log_difference: float
    median_frequency_ratio: float
    median_abs_log_difference: float
    max_abs_log_difference: float
    n_outside_caliper: int
    ks_statistic: float
    ks_p_value: float
    target_median_log_p: float
    matched_median_log_p: float


class SetInfo(Sparse):
    """One candidate set: what it holds, how many numbers per category it allows, how much of
    each prompt's probability it covers, and the Random null's match."""

    vocabulary_size: int | None = None  # vocab set only (VocabularyNumbers.describe)
    n_numbers: int
    scripts: dict[str, int] | None = None  # vocab set only: script -> numbers
    lengths: dict[int, int] | None = None  # vocab set only: digit length -> numbers
    n_rejected: int | None = None  # vocab set only
    rejected_examples: dict[str, list[int]] | None = None  # vocab set only
    leading_zeros: bool | None = None  # autoregressive sets only
    kind: Literal["vocab", "autoregressive"]
    length: int | None  # the digit length of an autoregressive set; None: vocab
    n_candidates: int
    k_requested: int
    k: int  # numbers per category; 0: the set is skipped
    skipped: str | None  # why the set is skipped
    mass_neutral: float  # P(the answer is one of the set's numbers), per prompt
    mass_owl_context: float
    mass_control_context: float | None = None  # older runs
    matching: Matching | None = None  # None: the set is skipped; absent: older runs
    warning: str | None  # k shrank
    tuned_from: str | None = None  # a tuned set ("ar2@tuned"): the set whose candidates it holds


class Categories(Sparse):
    """k numbers each, disjoint; random[i] is matched to increased[i]."""

    increased: list[str]
    decreased: list[str]
    unchanged: list[str]
    random: list[str]


class ScoringWork(Sparse):
    """`sublens.scoring.ScoringStats` of one phase-1 prompt, in tokens."""

    prompt_tokens: int
    node_tokens: int
    naive_tokens: int


# ---- phase 2: P(bias) and P(control) under the number prompts ---------------------------------
class AnimalProbabilities(Sparse):
    """P(' bias') and P(' control') at the animal prefill: chain rule, and the first token's."""

    p_bias: float
    p_control: float
    p_bias_first: float
    p_control_first: float


class TemplateWord(Sparse):
    """A non-number word in the number's slot, its probabilities and ratios to the neutral prompt."""

    word: str
    p_bias: float
    p_control: float
    p_bias_first: float
    p_control_first: float
    bias_ratio: float
    control_ratio: float
    relative_ratio: float


class RatioSummary(Summary):
    """`sublens.entanglement.ratio_summary` of positive ratios: arithmetic (`sublens.stats.summarize`,
    the keys of `Summary`) and geometric (Student t on the logs); NaN bounds: too few values for
    an interval."""

    geo_mean: float
    geo_ci_low: float
    geo_ci_high: float


class Comparison(Sparse):
    """`sublens.entanglement.compare_ratios`: ratio of geometric means, bootstrap CI, permutation p."""

    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    underpowered: bool
    n: list[int]  # [test, reference]


class Comparisons(Sparse):
    bias_ratio: Comparison
    relative_ratio: Comparison


class GroupStats(Sparse):
    """`sublens.entanglement.group_statistics` of a category (or the template words, or all
    categorised numbers), with the category's baseline frequency."""

    n: int
    prob_diff_mean: float | None = None  # numbers only (not the template words)
    specific_shift_mean: float | None = None  # numbers only; older runs
    bias_ratio: RatioSummary
    control_ratio: RatioSummary
    relative_ratio: RatioSummary
    vs_random: Comparisons | None = None  # the other three categories
    vs_template: Comparisons | None = None  # the four categories (hand-built partial runs lack it)
    p_neutral_norm_median: float | None = None  # the four categories; older runs
    p_owl_context_norm_median: float | None = None  # likewise
    log_p_neutral_median: float | None = None  # likewise


class Correlation(Sparse):
    """`sublens.entanglement.rank_correlation`: Spearman (NaN: under 3 points or no spread)."""

    n: int
    rho: float
    p_value: float


class SetStatistics(Sparse):
    """Descriptive statistics of one set's categories (verdicts: `ClaimsBlock`)."""

    increased: GroupStats
    decreased: GroupStats
    unchanged: GroupStats
    random: GroupStats
    categorised: GroupStats  # the four categories together
    all_scored: GroupStats | None = None  # only a set scored whole (n_candidates <= score_all_max)
    correlation_prob_diff_log_bias_ratio: Correlation
    correlation_specific_shift_log_bias_ratio: Correlation | None = None  # older runs


class TemplateControl(Sparse):
    words: list[str]
    system_template: str
    per_word: list[TemplateWord]
    stats: GroupStats | None = None  # the statistics step not reached


# ---- the claims (sublens.entanglement.claims_record) -----------------------------------------
class ClaimTest(Sparse):
    set: str
    test: str  # one of sublens.entanglement.TESTS
    claim: Claim
    estimate: Estimate


class DecisionEntry(Sparse):
    """A test's decision as recorded (Holm over every set and test), for readers that do not
    re-decide; the report re-decides from ``tests``."""

    set: str
    test: str
    name: str
    verdict: Verdict
    reason: str
    settle: str
    p_raw: float | None
    p_holm: float | None
    mde: float | None
    units_needed: int | None


class ClaimsBlock(Sparse):
    family: str
    settings: ClaimSettings
    primary_set: str | None  # the set of the paper's claim, fixed before any ratio was seen
    tests: list[ClaimTest]
    decisions: list[DecisionEntry]


# ---- cumulative priming and phase 3 ------------------------------------------------------------
class CumulativeOrder(Sparse):
    """All items of a category in one prompt, in one order."""

    order: list[str]
    p_bias: float
    p_control: float
    p_bias_first: float
    p_control_first: float
    bias_ratio: float
    control_ratio: float
    relative_ratio: float


class CumulativeGroup(Sparse):
    n_items: int
    bias_ratio: RatioSummary  # over the orders
    control_ratio: RatioSummary
    relative_ratio: RatioSummary
    per_order: list[CumulativeOrder]


class Cumulative(Sparse):
    orders: int
    system_template: str
    prompt_example: PromptRecord
    sets: dict[str, dict[str, CumulativeGroup]]  # set -> category; "template" -> "template"


class CategoryRatios(Sparse):
    increased: RatioSummary
    decreased: RatioSummary
    unchanged: RatioSummary
    random: RatioSummary


class LengthEntry(Sparse):
    """One digit length: the categorised numbers of its autoregressive set."""

    set: str
    k: int
    n: int
    bias_ratio: RatioSummary
    control_ratio: RatioSummary
    relative_ratio: RatioSummary
    categories: CategoryRatios  # each category's bias ratio


class Strongest(Sparse):
    """`sublens.entanglement.strongest` over the digit lengths."""

    best: str | None  # None: no length has a finite geometric mean
    geo_mean: float | None = None  # absent when best is None
    runner_up: str | None
    separable: bool  # the best length's CI lies above the runner-up's


class Lengths(Sparse):
    per_length: dict[str, LengthEntry]  # by digit length, "1", "2", ...
    strongest: Strongest | None  # None: no autoregressive set categorised


class TunedTeacher(Sparse):
    """The fine-tuned teachers whose shift categorises the tuned sets (config ``tuned_teacher``):
    a teacher run's owl teacher and its control teacher, scored under the neutral phase-1 prompt."""

    run: str  # the teacher run directory, as given
    teacher: str  # model spec of the owl teacher (the run directory: its first checkpoint)
    control_teacher: str  # model spec of the control teacher (RUN#control_teacher)
    base: str | None  # the model the teacher run fine-tuned (its config.yaml); None: not recorded
    prompt: PromptRecord  # the neutral number prompt in the teachers (their own chat template)
    sets: dict[str, str]  # tuned set -> the prompted set whose candidates it holds


# ---- the run ----------------------------------------------------------------------------------
class EntanglementResults(SparseResults):
    schema_version: int = 1
    model: str | None  # the model spec (None: a model given already loaded)
    bias: str
    control: str
    definitions: dict[str, str]  # sublens.experiments.entanglement.analysis.DEFINITIONS
    design: Design | None = None  # older runs
    answer_words: dict[str, AnswerWord]
    prompts: Prompts
    warnings: list[str]
    partial: bool
    phase: int  # the last phase saved (1, 2; 3: finished)
    sets: dict[str, SetInfo]  # in study order: vocab, ar1, ar2, ...
    k: dict[str, int]
    categories: dict[str, Categories]  # the sets that were not skipped (tuned sets after the others)
    phase1_work: dict[str, ScoringWork]  # by phase-1 prompt: neutral, bias, control; owl_teacher,
    #                                      control_teacher (the neutral prompt in the tuned teachers)
    neutral: AnimalProbabilities | None = None  # phase 2 not reached
    template_control: TemplateControl | None = None  # not reached
    category_stats: dict[str, SetStatistics] | None = None  # the statistics step not reached
    claims: ClaimsBlock | None = None  # not reached; older runs
    tuned_teacher: TunedTeacher | None = None  # absent: no teacher run given (no tuned sets)
    tuned_claims: ClaimsBlock | None = None  # the tuned sets' claims (their own Holm family)
    cumulative: Cumulative | None = None  # not reached, or cumulative_orders 0
    lengths: Lengths | None = None  # phase 3 not reached
    report: list[str] | None = None  # the terminal lines; written at the end
    figures: dict[str, list[str]] | None = None  # stem -> [png, pdf] paths; written at the end
