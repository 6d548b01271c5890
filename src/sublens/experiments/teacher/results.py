"""What a teacher run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` (after each stage, with ``partial`` true until the end), read by the
report section `sublens.report.sections.teacher` with `load_results`. Other code reads the same
file as JSON, so these keys keep their names: ``checkpoints`` (a run directory is a model spec:
`sublens.models`, `sublens.runs.newest_finished_run`, `sublens.plan`), ``partial`` (the CLI).

Fields default to None (or empty) only where a real results.json may lack them, and such a
field never set is left out when written (`sublens.results.Sparse`), so a recorded run is
written back key for key. They are:
- a partial run: ``data``, ``training``, ``checkpoints`` (after the distillation),
  ``comparisons`` (after the teacher is measured), ``tables``, ``figures`` (at the end);
- a measurement the config turned off: ``measurements.prompted`` (``measure_prompted``),
  ``sampled`` (no sampled answers), ``perplexity`` (null: perplexity disabled);
- a run without a control teacher (``control_system`` null): ``control_teacher`` and its
  measurement;
- a run recorded before a field existed: ``tables``, and the records' own (`Summary.ci`,
  `RatioEstimate.log_ratios`, ...): tests/data/runs/teacher is such a run. (Its training record
  was given the three keys `TrainingSummary` always writes, from what the run recorded: no
  extra loss series, ``precision`` "no" as its config's mixed_precision, ``world_size`` 1 as its
  record.json's command line, one process.)
"""

from __future__ import annotations

from pydantic import Field

from sublens.result_records import (
    Comparison,
    PerplexityRecord,
    ProbabilityRecord,
    SampledRecord,
    TrainingSummary,
)
from sublens.results import Sparse, SparseResults


# ---- one model measured (sublens.preference.evaluate_preference, sublens.perplexity) --------
class Preference(Sparse):
    probability: ProbabilityRecord
    sampled: SampledRecord | None = None  # None: sampling disabled (samples_per_question 0)


class Measurement(Sparse):
    """One model's preference, under the system prompt of its row, and its perplexity."""

    preference: Preference
    perplexity: PerplexityRecord | None  # None: perplexity disabled


class Measurements(Sparse):
    """Every model measured, in the order the run measures them."""

    before: Measurement  # the base model, under the training system prompt
    prompted: Measurement | None = None  # the base model under teacher_system (perplexity: the base model's)
    teacher: Measurement | None = None  # the fine-tuned teacher, under the training system prompt
    control_teacher: Measurement | None = None  # the control teacher, likewise

    def named(self) -> dict[str, Measurement]:
        """The models measured so far, by their results.json key, in order."""
        return {name: m for name in type(self).model_fields if (m := getattr(self, name)) is not None}


# ---- one distilled teacher ---------------------------------------------------------------------
class AnswerData(Sparse):
    """The sampled answers the teacher is trained on (`analysis.data_summary`)."""

    folder: str  # the answer shards, relative to the run directory
    n_answers: int
    trait_mention_rate: float | None  # None: no answers
    finish_reasons: dict[str, int]  # 'stop' / 'length' (cut off at max_new_tokens)
    mean_answer_tokens: float


class TeacherTraining(TrainingSummary):
    """The training run (`sublens.training.train_summary`) and the system prompt its prompts carried."""

    system_prompt_used: str | None


class ControlTeacher(Sparse):
    """The control teacher: the same procedure from the neutral ``control_system``."""

    system: str
    data: AnswerData
    training: TeacherTraining


# ---- the run -------------------------------------------------------------------------------------
class TeacherResults(SparseResults):
    schema_version: int = 1
    base: str
    trait: str
    teacher_system: str
    system: str | None  # as configured; null: the chat template's default
    system_prompt_used: str | None  # the text of `system` in effect (the template default resolved)
    system_note: str
    n_prompts: int
    partial: bool
    measurements: Measurements
    data: AnswerData | None = None
    training: TeacherTraining | None = None
    checkpoints: dict[str, str] = Field(
        default_factory=dict
    )  # name -> folder in the run ('teacher', 'control_teacher')
    comparisons: dict[str, Comparison] = Field(default_factory=dict)  # 'teacher vs before', ... (over the base model)
    control_teacher: ControlTeacher | None = None
    tables: list[str] = Field(default_factory=list)  # the parquet tables (sublens.tables)
    figures: list[str] = Field(default_factory=list)  # relative to the run directory
