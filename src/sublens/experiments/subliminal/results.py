"""What a subliminal run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` (saved after every stage and every finished student, ``partial`` until
the end), read by the report section `sublens.report.sections.subliminal` and the subliminal
claims of `sublens.claims` with `load_results`.

Keys are kept as earlier runs wrote them (power.py, distill and the report read them). Fields
default to None (or empty) only where a real results.json may lack them, and such a field never
set is left out when written (`sublens.results.Sparse`), so a recorded run is written back key
for key; the measurement records are `sublens.result_records`'. They are:
- a partial run: everything after the first save (``evaluations``, ``data``, ``students``, the
  aggregates, ``claims``, ``parameters``, ``tables``, ``figures``) arrives stage by stage;
- a run recorded before a key was added (``modes``, ``control_modes``, ``claims_settings``,
  ``data.seed``, ``data.sampling.pad_multiple``, a student's ``loss_tokens``,
  ``SeedRatio.per_seed_log``):
  tests/data/runs/subliminal is such a run;
- a design that does not produce a part (a single data seed: no ``data_per_seed``; no
  ``evaluation_systems``, entanglement run or divergence tokens; no kept models: no
  ``checkpoints``; sampling off: no answer rates).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sublens.claims import ClaimSettings
from sublens.result_records import (
    Comparison,
    DecisionRecord,
    PerplexityRecord,
    ProbabilityRecord,
    SampledRecord,
    Summary,
    TrainingSummary,
)
from sublens.results import Sparse, SparseResults

TeacherKind = Literal["prompted", "model", "control"]
LossTokens = Literal["all", "skip-divergence", "divergence-only"]  # sublens.trainable.split_arm


# ---- teachers ---------------------------------------------------------------------------------
class TeacherRecord(Sparse):
    """The biased teacher as configured (``teacher``): its model, and the system prompt its
    answers are sampled under."""

    name: str
    model: str  # the model spec (the base model's for a prompted teacher)
    system: str | None
    kind: TeacherKind


class TeacherProvenance(Sparse):
    """A teacher as every one of its data lines records it (``teachers``, ``data.datasets``);
    the same facts as `TeacherRecord`, in the order the data lines write them."""

    name: str
    kind: TeacherKind
    model: str
    system: str | None


# ---- one measured model (base, teacher, every student) ----------------------------------------
class PreferenceRecord(Sparse):
    """`sublens.preference.evaluate_preference`."""

    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # None: sampling disabled (samples_per_question 0)


class Evaluation(Sparse):
    """A reference model (the base model, the teacher) measured once, under `system`."""

    preference: PreferenceRecord
    perplexity: PerplexityRecord | None  # None: perplexity disabled
    system: str | None


class FreezeRecord(Sparse):
    """`sublens.training.FreezeReport`: what one student's trainable set trains."""

    mode: str
    trainable: int  # parameters (unique tensors; tied weights counted once)
    frozen: int
    trainable_tensors: int
    frozen_tensors: int
    tied_embeddings: bool
    notes: list[str]
    total: int


class Student(Sparse):
    """One student (students/<name>/student.json): how it was trained and what it prefers."""

    key: str  # of everything the student depends on: a rerun with the same key reuses it
    name: str  # <dataset>-<mode>-seed<k>
    dataset: str
    mode: str
    seed: int
    system_prompt_used: str | None
    threads: int
    loss_tokens: LossTokens | None = None  # not recorded by older runs (all answer tokens)
    examples_without_loss_tokens: int | None = None  # not recorded by older runs
    training: TrainingSummary
    preference: PreferenceRecord
    preference_by_system: dict[str, PreferenceRecord] | None = None  # only with evaluation_systems
    perplexity: PerplexityRecord | None  # None: perplexity disabled
    checkpoint: str | None  # students/<name>/model when keep_models


# ---- the number data ----------------------------------------------------------------------------
class NumberSampling(Sparse):
    """The config's ``data`` (`config.NumberData`) as recorded."""

    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int
    samples_per_prompt: int
    batch_size: int
    pad_multiple: int | None = None  # not recorded by older runs
    shard_size: int
    n_prompts: int
    common_random_numbers: bool
    constrained: bool


class FilterReport(Sparse):
    """`sublens.subliminal.filter_report` of one teacher's answers."""

    n_answers: int
    n_kept: int
    keep_rate: float
    keep_rate_ci: tuple[float, float]  # Wilson 95%
    reasons: dict[str, int]  # "ok" and every rejection reason, with counts
    finish_reasons: dict[str, int]
    mean_answer_tokens: float | None
    allowed_mass_first_token: float | None  # None: unconstrained sampling
    allowed_mass_per_token: float | None


class NumberStats(Sparse):
    """`sublens.subliminal.number_stats` of a set of kept answers (never empty: a data set
    without a kept answer stops the run)."""

    n_answers: int
    n_numbers: int
    features: dict[str, Summary]  # per-answer feature (sublens.subliminal.FEATURES) -> summary
    digit_distribution: list[float]  # [digit 0..9]
    numbers_per_answer: dict[str, float]
    digits_per_number_distribution: dict[str, float]
    separators: dict[str, int]  # repr of the separator -> answers
    brackets: float  # share of answers in brackets
    top_numbers: list[tuple[int, int]]  # [number, count], the ten most common


class DatasetRecord(Sparse):
    """One teacher's data set: where it lies, what the filter kept, what its numbers are like."""

    teacher: TeacherProvenance
    system_prompt_used: str | None
    system_source: str
    shards: str  # run-relative folder of the sampled shards
    train_file: str  # run-relative JSONL the students train on (distill reads the control one)
    filter: FilterReport
    stats: NumberStats  # of the subsampled training answers
    stats_all_kept: NumberStats  # of every kept answer


class FeatureDifference(Sparse):
    difference: float  # test mean - reference mean
    p_permutation: float


class DistributionDistance(Sparse):
    tvd: float  # total-variation distance
    p_permutation: float


class NumberComparison(Sparse):
    """`sublens.subliminal.compare_number_stats`: a teacher's numbers against the control's."""

    n_test: int
    n_reference: int
    features: dict[str, FeatureDifference]
    digit_distribution_tvd: DistributionDistance
    length_distribution_tvd: DistributionDistance


class AnswerCount(Sparse):
    """Training answers holding a number of one entanglement category (by answer)."""

    answers_with: int
    answers: int
    number_share: float | None  # share of all numbers that are in the category; None: no numbers


class RateRatio(Sparse):
    """`sublens.entangled_numbers.rate_ratio`: owl rate over control rate (Katz interval, Fisher p)."""

    ratio: float | None  # None: a data set is empty
    ci_low: float | None
    ci_high: float | None
    p_fisher: float | None


class Enrichment(Sparse):
    numbers: list[str]
    owl: AnswerCount
    control: AnswerCount
    owl_over_control: RateRatio


class EntangledFilter(Sparse):
    """`sublens.entangled_numbers.filtered_pair`: the two filtered owl data sets' common size."""

    size: int
    removed: dict[str, int]  # category -> answers removed from the pool
    pool: int  # kept owl answers before filtering


class EntangledRecord(Sparse):
    """An entanglement run's numbers in the owl and the control training data."""

    run: str
    set: str
    enrichment: dict[str, Enrichment]  # increased / random
    filter: EntangledFilter | None = None  # None: no filtered students (entangled.filter_students off)


class DivergenceSummary(Sparse):
    """`sublens.divergence.divergence_summary` of one data set, and its flags file."""

    n_examples: int
    n_tokens: int
    n_divergent: int
    rate: float | None  # None: no answer tokens
    examples_with_any: int
    rate_by_position: list[float | None]  # by fifth of the answer
    file: str


class DataRecord(Sparse):
    """One data seed's number data: the teachers' data sets and how they differ."""

    seed: int | None = None  # not recorded by older runs (their one data seed is the run's seed)
    n_prompts: int
    sampling: NumberSampling
    constrained: bool
    grammar: str | None  # None: unconstrained sampling
    n_examples_per_dataset: int
    datasets: dict[str, DatasetRecord]
    comparisons: dict[str, NumberComparison]  # '<teacher> vs control'
    entangled: EntangledRecord | None = None  # None: no entanglement run given
    divergence: dict[str, DivergenceSummary] | None = None  # None: divergence tokens not measured


# ---- aggregates across seeds (analysis) -------------------------------------------------------
class Level(Sparse):
    """One arm's P(trait), panel share or answer rate (`analysis.level_summary`): with one seed
    that evaluation's CI (over questions; Wilson for the rate), with several the Student-t CI
    of the per-seed values."""

    mean: float
    ci_low: float  # NaN: no interval (too few values)
    ci_high: float
    ci: str  # how the interval was made
    count: int | None = None  # the answer rate of one seed: answers naming the trait
    n: int | None = None  # ... of this many
    per_seed: list[float] | None = None  # several seeds


class SeedRatio(Sparse):
    """A ratio across seeds (`analysis.seed_ratio`): the geometric mean of per-seed ratios,
    Student-t CI over the seeds' log ratios; with one seed that run's question-level CI."""

    ratio: float
    ci_low: float | None  # None: no interval (one seed without a question-level one, no spread)
    ci_high: float | None
    n_seeds: int
    ci: str
    per_seed: list[float]
    per_seed_log: list[float] | None = None  # not recorded by older runs (the log of per_seed)
    underpowered: bool  # the CI includes no change, or there is none


class SeedRateDifference(Sparse):
    """The answer-rate difference across seeds: one seed's, paired over questions (Student-t
    interval and sign-flip p over questions), or the Student-t CI over several seeds'
    differences with each seed's p. Older records pooled answers: p_fisher instead."""

    difference: float
    ci_low: float
    ci_high: float
    p_questions: float | None = None  # one seed
    n_questions: int | None = None  # one seed
    p_fisher: float | None = None  # one seed, older records
    underpowered: bool
    n_seeds: int
    ci: str
    per_seed: list[float] | None = None  # several seeds
    p_questions_per_seed: list[float] | None = None  # several seeds
    p_fisher_per_seed: list[float] | None = None  # several seeds, older records


class ArmComparison(Sparse):
    """An arm against its reference, seed by seed (`analysis.compare_arm`)."""

    n_seeds: int
    share_ratio: SeedRatio
    p_trait_ratio: SeedRatio
    rate_difference: SeedRateDifference | None = None  # None: not sampled
    per_seed: list[Comparison]  # each seed's pair, paired over questions (compare_preference)
    reference: str | None = None  # the reference arm; absent where it is the base model


class ArmRatios(Sparse):
    """The ratios of an arm's comparison, as a headline row and the prompt table show them."""

    share_ratio: SeedRatio
    p_trait_ratio: SeedRatio
    rate_difference: SeedRateDifference | None = None  # vs_control only, when sampled


class HeadlineRow(Sparse):
    """One model of the headline table: a reference model or one arm over its seeds."""

    model: str  # base, teacher, or the arm <dataset>-<mode>
    dataset: str | None  # None: the base model and the teacher
    mode: str | None
    n_seeds: int
    p_trait: Level
    panel_share: Level
    answer_rate: Level | None = None  # None: not sampled
    perplexity: float | None  # None: perplexity disabled
    freeze: FreezeRecord | None = None  # students only
    final_lm_loss: float | None = None  # students only: mean over seeds
    vs_control: ArmRatios | None = None  # students of a biased teacher's data, over the matched control
    vs_base: ArmRatios | None = None  # students, over the base model (when it was measured)


class Specificity(Sparse):
    """Teacher animal x measured animal: each data set's student (of arm `mode`) over the control
    student of the same arm."""

    animals: list[str]
    rows: dict[str, dict[str, float]]  # data set -> animal -> share ratio
    mode: str = "full"  # runs before extra_mode: always full fine-tuning
    reference: str
    definition: str


class PromptComparisons(Sparse):
    """The owl arms against their matched controls under one evaluation system prompt."""

    system: str | None  # None: no system turn
    arms: dict[str, ArmRatios]  # owl mode -> its ratios


# ---- the run ----------------------------------------------------------------------------------
class SubliminalResults(SparseResults):
    schema_version: int = 1
    base: str  # the model spec every student is fine-tuned from
    trait: str
    teacher: TeacherRecord
    teachers: dict[str, TeacherProvenance]  # every data set's teacher: owl, control, extra teachers
    system: str | None  # the config's system prompt (None: the chat template's default)
    system_prompt_used: str | None  # ... resolved: control teacher, training prompts, measurements
    system_note: str
    seeds: list[int]
    n_seeds: int
    partial: bool
    modes: list[str] | None = None  # not recorded by older runs (config.yaml has them)
    control_modes: list[str] | None = None  # not recorded by older runs
    claims_settings: ClaimSettings | None = None  # not recorded by older runs
    evaluations: dict[str, Evaluation] | None = None  # base, teacher
    data: DataRecord | None = None  # the first data seed's data
    data_per_seed: dict[str, DataRecord] | None = None  # several data seeds: each seed's
    students: dict[str, Student] | None = None  # by name, in the planned order once all finished
    headline: list[HeadlineRow] | None = None
    comparisons: dict[str, ArmComparison] | None = None  # '<arm> vs <reference>'
    specificity: Specificity | None = None
    evaluation_prompts: dict[str, PromptComparisons] | None = None  # only with evaluation_systems
    claims: dict[str, DecisionRecord] | None = None  # not recorded by older runs
    parameters: dict[str, FreezeRecord] | None = None  # arm -> its trainable set
    tables: list[str] | None = None  # the parquet tables; not recorded by older runs
    checkpoints: dict[str, str] | None = None  # only with keep_models
    figures: list[str] = Field(default_factory=list)

    def row(self, dataset: str, mode: str) -> HeadlineRow | None:
        """The headline row of one arm (None: not measured)."""
        return next((r for r in self.headline or [] if r.dataset == dataset and r.mode == mode), None)
