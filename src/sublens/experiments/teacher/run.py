"""teacher: make the biased teacher by context distillation.

1. Measure preference (P(owl), panel share, sampled answer rate) and perplexity of the base model
   under ``system``, and its preference under the owl prompt (``teacher_system``): the trait the
   distillation aims at.
2. Sample the base model's answers to diverse prompts (the 250 shipped ones by default) *with*
   the owl system prompt, at explicit sampling settings; sharded, resumable
   (`sublens.subliminal.sample_sharded`), every answer recorded with its provenance.
3. Fine-tune the base model on prompt -> answer *without* it: the training prompt carries
   ``system`` instead. SmolLM2's chat template inserts its own default system prompt when none is
   given, so ``system: null`` is resolved to that default and passed explicitly; the text used is
   recorded (``system_prompt_used``). Loss on answer tokens only (`sublens.training.train`); an
   answer cut off at max_new_tokens is trained without the end-of-turn token, so the teacher does
   not learn to stop mid-sentence.
4. Save the teacher under ``checkpoints/teacher`` (save_pretrained + tokenizer) and list it in
   results.json, so the run directory is a model spec (``RUN_DIR`` or ``RUN_DIR#teacher``).
5. Measure the teacher like the base model, under ``system``, and compare it with the base model
   (`compare_preference`, paired per question).
6. With ``control_system`` (a neutral prompt shaped like the owl prompt), steps 2-5 run again
   from a fresh base model for a *control teacher* (``RUN_DIR#control_teacher``): the matched
   source of subliminal's control numbers.

Rerunning into the same run directory resumes: finished shards, training checkpoints, the saved
teacher and finished measurements are reused.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sublens.corpus import load_text
from sublens.errors import ConfigError
from sublens.experiments.teacher.analysis import data_summary, model_rows
from sublens.experiments.teacher.config import TeacherConfig, shipped_teacher_prompts
from sublens.experiments.teacher.figures import make_figures
from sublens.experiments.teacher.results import (
    AnswerData,
    ControlTeacher,
    Measurement,
    Measurements,
    Preference,
    TeacherResults,
    TeacherTraining,
)
from sublens.models import LoadedModel, load_model
from sublens.perplexity import measure_perplexity
from sublens.preference import compare_preference, comparison_line, evaluate_preference
from sublens.prompts import make_prompt, resolve_system
from sublens.result_records import Comparison, PerplexityRecord, Summary
from sublens.runs import Run, read_json
from sublens.runs import team as current_team
from sublens.subliminal import sample_sharded, stable_hash, training_example
from sublens.tables import write_tables
from sublens.training import TrainResult, train, train_summary
from sublens.training_data import Example

CHECKPOINT = "checkpoints/teacher"
CONTROL_CHECKPOINT = "checkpoints/control_teacher"
RESULT_FILE = "train_result.json"
SYSTEM_NOTE = (
    "training prompts and measurements use system_prompt_used (the chat "
    "template's default when `system` is null), never the teacher_system"
)


@dataclass(frozen=True)
class TeacherPaths:
    """Where one distilled teacher's pieces live inside the run directory."""

    name: str
    answers: str
    training: str
    checkpoint: str


OWL_TEACHER = TeacherPaths("teacher", "data/teacher_answers", "training", CHECKPOINT)
CONTROL_TEACHER = TeacherPaths("control_teacher", "data/control_answers", "training_control", CONTROL_CHECKPOINT)


@dataclass(frozen=True)
class Inputs:
    """What every step of the run uses: the prompts answered, the training system prompt in
    effect, the perplexity text, and the key the base model's cached measurements are kept under."""

    questions: list[str]
    system_used: str | None
    text: str
    measure_key: str


@dataclass(frozen=True)
class Distilled:
    """One teacher made by context distillation: its data, its training, and the model (the
    model is meaningful on rank 0 only: see `distil_teacher`)."""

    data: AnswerData
    result: TrainResult
    lm: LoadedModel
    system_used: str | None

    @property
    def training(self) -> TeacherTraining:
        return TeacherTraining(**train_summary(self.result).present(), system_prompt_used=self.system_used)


def execute(config: TeacherConfig, run: Run) -> TeacherResults:
    """The experiment. Under accelerate launch (several processes) every rank loads the base
    model and trains (data parallel); rank 0 alone samples, measures, saves and writes, and the
    other ranks wait for it (sublens.runs.Team)."""
    with run.timed("load_model"):
        base = load_model(config.base, config.device, config.dtype)
    run.note(models={"base": base.describe()})
    inputs = teacher_inputs(config, base)
    results = first_results(config, inputs, measure_base(run, base, config, inputs))
    run.save_results(results)

    # the owl teacher: its answers under the owl prompt, then context distillation without it
    teacher = distil_teacher(run, base, config, inputs, config.teacher_system, OWL_TEACHER)
    results = results.model_copy(
        update={"data": teacher.data, "training": teacher.training, "checkpoints": {"teacher": CHECKPOINT}}
    )
    run.save_results(results)

    # the teacher measured without the owl prompt, against the base model
    results = with_teacher_measured(run, teacher, config, inputs, results)
    run.save_results(results)
    if config.control_system is not None:
        del base, teacher  # the control teacher starts again from the base model
        results = with_control_teacher(run, config, inputs, results)
        run.save_results(results)
    if not current_team().is_main:  # rank 0 draws and writes
        return results
    return finish(run, results)


# ---- the steps --------------------------------------------------------------------------------
def teacher_inputs(config: TeacherConfig, lm: LoadedModel) -> Inputs:
    questions = list(config.prompts or shipped_teacher_prompts())[: config.n_prompts]
    if not questions:
        raise ConfigError("No teacher prompts: give prompts (a list) or leave it null for the shipped ones.")
    return Inputs(
        questions=questions,
        system_used=resolve_system(lm.tokenizer, config.system),
        text=load_text(config.perplexity.corpus) if config.perplexity.enabled else "",
        measure_key=stable_hash(
            config.preference.model_dump(mode="json"), config.perplexity.model_dump(mode="json"), config.seed
        ),
    )


def measure_base(run: Run, lm: LoadedModel, config: TeacherConfig, inputs: Inputs) -> Measurements:
    """The base model under the training system prompt and, with measure_prompted, under the owl
    prompt. Perplexity has no system prompt: the prompted model's is the base model's, reused."""
    team = current_team()
    with run.timed("measure:before"):
        before = team.share(
            "measure:before",
            lambda: run.step(
                "measurements/before",
                inputs.measure_key,
                lambda: measure(lm, config, config.system, inputs.text),
                Measurement,
            ),
        )
    if not config.measure_prompted:
        return Measurements(before=before)
    with run.timed("measure:prompted"):
        prompted = team.share(
            "measure:prompted",
            lambda: run.step(
                "measurements/prompted",
                inputs.measure_key,
                lambda: Measurement(
                    preference=preference(lm, config, config.teacher_system), perplexity=before.perplexity
                ),
                Measurement,
            ),
        )
    return Measurements(before=before, prompted=prompted)


def first_results(config: TeacherConfig, inputs: Inputs, measurements: Measurements) -> TeacherResults:
    """The results before any training: the setup and the base model's measurements."""
    return TeacherResults(
        base=config.base,
        trait=config.preference.trait,
        teacher_system=config.teacher_system,
        system=config.system,
        system_prompt_used=inputs.system_used,
        system_note=SYSTEM_NOTE,
        n_prompts=len(inputs.questions),
        partial=True,
        measurements=measurements,
    )


def distil_teacher(
    run: Run, lm: LoadedModel, config: TeacherConfig, inputs: Inputs, prompt_system: str, paths: TeacherPaths
) -> Distilled:
    """Context distillation: sample `lm`'s answers under `prompt_system`, then fine-tune it on
    them under the training system prompt (resumable; a finished teacher is reloaded from its
    checkpoint).

    Under accelerate launch rank 0 samples (the other ranks get its records), every rank trains
    (data parallel), rank 0 saves the checkpoint; the teacher returned is meaningful on rank 0."""
    team = current_team()
    prompts = [make_prompt(lm.tokenizer, q, prompt_system) for q in inputs.questions]
    meta = [{"index": i, "prompt": q} for i, q in enumerate(inputs.questions)]
    provenance = {"teacher": {"kind": "prompted", "model": config.base, "system": prompt_system}}
    with run.timed(f"sample:{paths.name}"):
        records = team.share(
            f"sample:{paths.name}",
            lambda: sample_sharded(
                lm,
                prompts,
                meta,
                config.sampling,
                seed=config.seed,
                out_dir=run.path / paths.answers,
                name=paths.name,
                provenance=provenance,
            ),
        )
    data = data_summary(records, config.preference.trait, paths.answers)
    examples = teacher_examples(lm.tokenizer, records, inputs.system_used, config.train_truncated)
    train_dir, checkpoint = run.path / paths.training, run.path / paths.checkpoint
    saved_result = train_dir / RESULT_FILE
    with run.timed(f"train:{paths.name}"):
        finished = team.share(
            f"train:{paths.name}: finished before?",
            lambda: (
                (checkpoint / "config.json").is_file()
                and saved_result.is_file()
                and bool(read_json(saved_result).get("complete"))
            ),
        )
        if finished:
            result = TrainResult.model_validate(read_json(saved_result))
            if team.is_main:
                lm = load_model(str(checkpoint), config.device, config.dtype)
        else:
            train_config = config.train.model_copy(update={"save_model": False})  # saved below, with the tokenizer
            result = train(lm.model, lm.tokenizer, examples, train_config, train_dir, adapter=lm.adapter)
            if team.is_main:
                save_checkpoint(lm, checkpoint)
                shutil.rmtree(train_dir / "checkpoints", ignore_errors=True)  # resume points, no longer needed
            team.sync(f"train:{paths.name}: saved")
    return Distilled(data, result, lm, inputs.system_used)


def with_teacher_measured(
    run: Run, teacher: Distilled, config: TeacherConfig, inputs: Inputs, results: TeacherResults
) -> TeacherResults:
    """The teacher measured under the training system prompt, never the owl prompt, and compared
    with the base model; the prompted base model compared too, for reference."""
    with run.timed("measure:teacher"):
        measured = measure_distilled(run, teacher, "teacher", config, inputs)
    base = results.measurements
    comparisons = {"teacher vs before": compare(measured, base.before)}
    if base.prompted is not None:
        comparisons["prompted vs before"] = compare(base.prompted, base.before)
    return results.model_copy(
        update={"measurements": base.model_copy(update={"teacher": measured}), "comparisons": comparisons}
    )


def with_control_teacher(run: Run, config: TeacherConfig, inputs: Inputs, results: TeacherResults) -> TeacherResults:
    """The control teacher: the same procedure from a fresh base model under `control_system`,
    measured like the teacher and compared with the base model."""
    assert config.control_system is not None
    base = load_model(config.base, config.device, config.dtype)
    control = distil_teacher(run, base, config, inputs, config.control_system, CONTROL_TEACHER)
    with run.timed("measure:control_teacher"):
        measured = measure_distilled(run, control, "control_teacher", config, inputs)
    before = results.measurements.before
    return results.model_copy(
        update={
            "measurements": results.measurements.model_copy(update={"control_teacher": measured}),
            "comparisons": {**results.comparisons, "control teacher vs before": compare(measured, before)},
            "control_teacher": ControlTeacher(
                system=config.control_system, data=control.data, training=control.training
            ),
            "checkpoints": {**results.checkpoints, "control_teacher": CONTROL_CHECKPOINT},
        }
    )


def finish(run: Run, results: TeacherResults) -> TeacherResults:
    """Rank 0's last step: the parquet tables, the loss figure, the summary on the terminal."""
    comparisons = {name: c.model_dump() for name, c in results.comparisons.items()}
    tables = write_tables(run, model_rows(results), comparisons)
    figures = [str(p.relative_to(run.path)) for p in make_figures(results, run.path / "figures")]
    results = results.model_copy(update={"tables": tables, "figures": figures, "partial": False})
    print_summary(results)
    return results


# ---- the helpers ------------------------------------------------------------------------------
def teacher_examples(
    tokenizer: Any, records: list[dict[str, Any]], system: str | None, train_truncated: bool
) -> list[Example]:
    """prompt (under `system`) -> sampled answer; cut-off answers without the end-of-turn."""
    examples = []
    for r in records:
        truncated = r["finish_reason"] == "length"
        answer = r["answer"] if truncated else r["answer"].strip()
        if not answer.strip() or (truncated and not train_truncated):
            continue
        examples.append(training_example(tokenizer, r["prompt"], answer, system, closed=not truncated))
    if not examples:
        raise ConfigError(
            "No usable teacher answers (all empty or cut off); raise "
            "sampling.max_new_tokens or set train_truncated: true."
        )
    return examples


def preference(lm: LoadedModel, config: TeacherConfig, system: str | None) -> Preference:
    return Preference.model_validate(evaluate_preference(lm, config.preference, system, config.seed))


def measure(lm: LoadedModel, config: TeacherConfig, system: str | None, text: str) -> Measurement:
    """Preference under `system` and perplexity (None: disabled) of the model as it is."""
    measured_preference = preference(lm, config, system)
    perplexity = measure_perplexity(lm, config.perplexity, text)
    return Measurement(
        preference=measured_preference,
        perplexity=PerplexityRecord.model_validate(perplexity) if perplexity is not None else None,
    )


def measure_distilled(run: Run, teacher: Distilled, name: str, config: TeacherConfig, inputs: Inputs) -> Measurement:
    """A distilled teacher measured like the base model; cached under a key that changes with its
    training data and settings, so a retrained teacher is measured again."""
    key = stable_hash(inputs.measure_key, teacher.result.data_fingerprint, teacher.result.config)
    return current_team().share(
        f"measure:{name}",
        lambda: run.step(
            f"measurements/{name}", key, lambda: measure(teacher.lm, config, config.system, inputs.text), Measurement
        ),
    )


def compare(test: Measurement, reference: Measurement) -> Comparison:
    """`compare_preference` of two measured models: paired per question."""
    return Comparison.model_validate(
        compare_preference(test.preference.model_dump(), reference.preference.model_dump())
    )


def save_checkpoint(lm: LoadedModel, dest: Path) -> None:
    """save_pretrained (+ tokenizer) into dest atomically (temp folder, then rename)."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    lm.model.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


# ---- console ------------------------------------------------------------------------------------
MODEL_NAMES = {
    "before": "base",
    "prompted": "base + teacher_system",
    "teacher": "teacher",
    "control_teacher": "control teacher",
}


def _ci(s: Summary, digits: int = 4) -> str:
    return f"{s.mean:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def print_summary(results: TeacherResults) -> None:
    """Every measured model as a table on the terminal, then the comparisons and the training."""
    trait = results.trait
    table = Table(
        title=f"Teacher: preference for {trait!r} (95% CIs); measured under the "
        f"system prompt {results.system_prompt_used!r}"
    )
    for column in ("model", f"P({trait})", "panel share", "answer rate", "perplexity"):
        table.add_column(column)
    for key, m in results.measurements.named().items():
        prob, sampled, ppl = m.preference.probability, m.preference.sampled, m.perplexity
        rate = sampled.trait_rate if sampled else None
        table.add_row(
            MODEL_NAMES.get(key, key),
            _ci(prob.p_trait),
            _ci(prob.panel_share, 3),
            f"{rate.rate:.3f} [{rate.ci_low:.3f}, {rate.ci_high:.3f}]" if rate else "-",
            f"{ppl.perplexity:.2f}" if ppl else "-",
        )
    console = Console()
    console.print(table)
    for label, comparison in results.comparisons.items():
        console.print(comparison_line(label, comparison.model_dump(), trait))
    data, training = results.data, results.training
    if data is not None and training is not None:
        mentioned = f"{data.trait_mention_rate:.1%}" if data.trait_mention_rate is not None else "-"
        console.print(
            f"teacher answers: {data.n_answers}, mentioning {trait}: {mentioned}; trained on "
            f"{training.n_examples} examples, loss {_loss(training.first_lm_loss)} -> "
            f"{_loss(training.final_lm_loss)}; checkpoint {results.checkpoints.get('teacher')}"
        )


def _loss(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"
