"""What a distill run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` (saved after the initial student and after every trained student with
``partial``, complete at the end), read by the report section `sublens.report.sections.distill`
(which decides the claims) with `load_results`.

A key the run writes only in some cases stays absent in the other cases: such a field defaults
to None (or empty) and is written only when the run set it (`sublens.results.Sparse`), so a
recorded run is written back key for key. The measurement records and the training summary
are `sublens.result_records`'. Such fields are:
- a partial run: ``comparisons``, ``headline``, ``tables``, ``throughput``, ``figures``
  (written at the end);
- not measured: ``sampled`` and every ``rate_difference`` (sampling off), a headline comparison
  whose arm was not trained, ``AlphaSummary`` beyond ``n`` (a layer with nothing squeezed);
- a run recorded before a field existed (tests/data/runs/distill is such a run: one seed,
  comparisons as `compare_preference` wrote them): ``per_seed``, ``tables``, ``ArmRecord.seed``,
  ``ShdRecord.kl_direction``, ``FitRecord.kl_direction``, ``Comparison.n_seeds``/``seeds``/
  ``per_seed_comparisons``, the seed fields of `SeedRatio` and `SeedRateDifference`;
- "hand-built comparisons": ``SeedRatio.n_questions`` and ``underpowered``, absent from the
  per-seed ratios the report tests build (tests/unit/test_sections_training.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from sublens.result_records import (
    ProbabilityRecord,
    Rate,
    RateDifference,
    RatioEstimate,
    SampledRecord,
    Summary,
    TrainingSummary,
)
from sublens.results import Sparse, SparseResults

Arm = Literal["shd_biased", "lm_only", "shd_base"]
ARMS: tuple[Arm, ...] = ("shd_biased", "lm_only", "shd_base")
Role = Literal["biased", "base"]  # the teacher an arm distils from
ARM_TEACHER: dict[str, Role | None] = {"shd_biased": "biased", "lm_only": None, "shd_base": "base"}
TRANSFER, SPECIFIC = "shd_biased_vs_lm_only", "shd_biased_vs_shd_base"  # the comparisons the claims rest on


# ---- the set-up -----------------------------------------------------------------------------
class TeacherRecord(Sparse):
    """A teacher as used: its spec, what it reads around the texts, and how its heads and layers
    map onto the student's (`sublens.distill.ShdTeacher.describe`)."""

    spec: str
    format: Literal["chat", "plain"]
    system: str | None = None  # chat format: the system prompt in effect (absent for plain)
    context: str | None = None  # plain format: the context paragraph before the text (absent for chat)
    source: str  # of the system prompt / context: given, template_default or none
    teacher_heads: int
    student_heads: int
    merge_schedule: list[int]  # pairs merged per squeezing phase
    fallback: str | None  # the rule for a student with more heads (null: not needed)
    layer_map: dict[str, int]  # student layer -> teacher layer
    student_windows: dict[str, int]  # student layers with a sliding attention window -> its size


class DataRecord(Sparse):
    """The training and held-out fit texts: where from, how many, how many tokens."""

    source: str  # a JSONL file, or "generated"
    generator: str | None = None  # generated texts only
    n_available: int
    n_train: int
    n_fit: int
    shuffled: bool
    student_tokens: int
    answer_tokens: int
    mean_student_tokens: float
    mean_teacher_tokens: dict[str, float]  # by teacher role
    identity_alignment: dict[str, bool]  # by teacher role: one tokenization for both models


class ShdRecord(Sparse):
    """The SHD settings of the run (config ``shd``)."""

    beta: float
    temperature: float
    layers: list[int] | None  # null: every student layer
    fallback: str
    kl_direction: str | None = None  # not recorded by older runs, which used teacher_student


class AlphaQuantiles(Sparse):
    q10: float
    q25: float
    median: float
    q75: float
    q90: float


class AlphaSummary(Sparse):
    """The squeezing weights α of one student layer over every fit text and merge phase
    (`analysis.alpha_summary`); only ``n`` (0) where the layer squeezes nothing."""

    n: int
    mean: float | None = None
    std: float | None = None
    quantiles: AlphaQuantiles | None = None
    at_0: float | None = None  # share of α at 0 (the pair's second head alone)
    at_1: float | None = None
    at_half: float | None = None
    per_phase_mean: list[float] | None = None


# ---- fit of a student's maps to a teacher's (sublens.distill.measure_fit) ------------------------
class LayerKl(Sparse):
    mean: float  # over the distilled layers
    per_layer: dict[str, float]  # student layer -> KL, nats per query row


class FitRecord(Sparse):
    """One student state's KL to one teacher's squeezed maps on the held-out texts. Written as
    `measure_fit` returns it: the KL at each temperature under its own key ("T=1", "T=2"), read
    here into ``by_temperature``."""

    layers: list[int]
    kl_direction: str | None = None  # not recorded by older runs, which used teacher_student
    rows: dict[str, int]  # student layer -> query rows compared
    by_temperature: dict[str, LayerKl]  # "T=<t>" -> KL at that temperature, lowest first

    @model_validator(mode="before")
    @classmethod
    def _gather_temperatures(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "by_temperature" in data:
            return data
        kept = {k: v for k, v in data.items() if not str(k).startswith("T=")}
        return {**kept, "by_temperature": {k: v for k, v in data.items() if str(k).startswith("T=")}}

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Sparse's rule (only set fields), then the temperatures back at the top level
        data: dict[str, Any] = {k: v for k, v in handler(self).items() if self._is_written(k)}
        return {**{k: v for k, v in data.items() if k != "by_temperature"}, **data.get("by_temperature", {})}

    def kl(self, temperature: float | None = None) -> LayerKl | None:
        """The KL at `temperature`; None: the first recorded (the lowest temperature)."""
        if temperature is None:
            return next(iter(self.by_temperature.values()), None)
        return self.by_temperature.get(f"T={temperature:g}")


# ---- the students ------------------------------------------------------------------------------
class PreferenceRecord(Sparse):
    """`sublens.preference.evaluate_preference` of one student."""

    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # absent: sampling off (samples_per_question 0)


class Initial(Sparse):
    preference: PreferenceRecord


class ArmRecord(Sparse):
    """The first training seed's student of an arm: the one the figures and the table show."""

    teacher: Role | None  # the teacher it distils from; null: LM loss only
    train: TrainingSummary  # its SHD loss and mean α per step: extra_curves "shd", "alpha_mean"
    preference: PreferenceRecord
    seed: int | None = None  # not recorded by older runs (one seed, the config's)


class SeedStudent(Sparse):
    """One arm's student of one training seed."""

    train: TrainingSummary
    preference: PreferenceRecord
    fit: dict[str, FitRecord]  # by teacher role


# ---- comparisons ---------------------------------------------------------------------------------
class PairedComparison(Sparse):
    """`sublens.preference.compare_preference` of two students of one seed, paired over questions."""

    p_trait_ratio: RatioEstimate
    share_ratio: RatioEstimate
    rate_difference: RateDifference | None = None  # absent: not sampled


class SeedRatio(RatioEstimate):
    """A ratio across training seeds (`analysis.across_seeds`): the geometric mean of the per-seed
    ratios with a Student-t CI over seeds; with one seed, that seed's question-level ratio."""

    p_value: float | None = None  # several seeds only
    sd_log: float | None = None  # several seeds only: between-seed SD of the log ratios
    n_seeds: int | None = None
    per_seed: list[float] | None = None
    per_seed_log: list[float] | None = None  # what the claims are decided on


class SeedRateDifference(Sparse):
    """The answer-rate difference: one seed's, paired over questions (Student-t CI, sign-flip p
    over questions), or the mean over seeds with a Student-t CI (one p per seed). Older
    records pooled answers (Fisher's p) instead."""

    difference: float
    ci_low: float | None  # None: no interval over seeds (too few, or all equal)
    ci_high: float | None
    p_questions: float | None = None  # one seed only
    n_questions: int | None = None  # one seed only
    p_fisher: float | None = None  # one seed only, older records
    underpowered: bool
    n_seeds: int | None = None
    ci: str | None = None
    per_seed: list[float] | None = None
    p_questions_per_seed: list[float | None] | None = None
    p_fisher_per_seed: list[float | None] | None = None  # older records


class Comparison(Sparse):
    """One pair of arms (or an arm against the initial student), seed by seed and across seeds."""

    n_seeds: int | None = None
    seeds: list[int] | None = None
    p_trait_ratio: SeedRatio
    share_ratio: SeedRatio
    rate_difference: SeedRateDifference | None = None  # absent: not sampled
    per_seed_comparisons: list[PairedComparison] | None = None


class StudentLevels(Sparse):
    p_trait: Summary
    panel_share: Summary
    answer_rate: Rate | None  # null: not sampled


class HeadlineComparison(Sparse):
    p_trait_ratio: SeedRatio
    share_ratio: SeedRatio
    rate_difference: SeedRateDifference | None  # null: not sampled


class Headline(Sparse):
    """Every student's owl preference, and the biased-SHD student against both controls."""

    trait: str
    students: dict[str, StudentLevels]  # initial, then the arms
    shd_biased_vs_lm_only: HeadlineComparison | None = None  # absent: an arm not trained
    shd_biased_vs_shd_base: HeadlineComparison | None = None


class Throughput(Sparse):
    tokens: int
    train_seconds: float
    tokens_per_second: float


# ---- the run -------------------------------------------------------------------------------------
class DistillResults(SparseResults):
    schema_version: int = 1
    partial: bool
    student: str  # the student's model spec
    teachers: dict[str, TeacherRecord]  # by role: biased, base
    data: DataRecord
    shd: ShdRecord
    alphas: dict[str, dict[str, AlphaSummary]]  # role -> student layer -> α summary
    fit: dict[str, dict[str, FitRecord]]  # student state (initial, then the arms) -> role -> fit
    arms: dict[str, ArmRecord]  # the first seed's students
    checkpoints: dict[str, str]  # name -> saved model, relative to the run (a model spec: RUN#name)
    seeds: list[int]  # the training seeds
    per_seed: dict[str, dict[str, SeedStudent]] = Field(default_factory=dict)  # seed -> arm -> student
    notes: list[str]
    initial: Initial  # the student before training
    comparisons: dict[str, Comparison] = Field(default_factory=dict)  # "<arm>_vs_<arm or initial>"
    headline: Headline | None = None
    tables: list[str] = Field(default_factory=list)  # parquet files (sublens.tables)
    throughput: dict[str, Throughput] = Field(default_factory=dict)  # by arm (first seed)
    figures: list[str] = Field(default_factory=list)  # relative to the run

    def preference(self, student: str) -> PreferenceRecord | None:
        """A student's preference: "initial" or an arm's (first seed)."""
        if student == "initial":
            return self.initial.preference
        arm = self.arms.get(student)
        return arm.preference if arm is not None else None

    def comparison(self, key: str) -> Comparison | None:
        return self.comparisons.get(key)
