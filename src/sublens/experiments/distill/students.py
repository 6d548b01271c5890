"""distill: the students: the teachers' fit targets and the measurement of a student (KL to
each teacher's squeezed maps, owl preference: `fit_targets`, `measure`), the results of the
initial student (`first_results`), and every arm's student trained from the initial weights for
each training seed and measured (`train_student`, `train_and_measure`, `with_student`; a rank
> 0 of a launch joins the training steps only: `follow`).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np

from sublens.distill import FitSet, ShdLoss, measure_fit
from sublens.experiments.distill.analysis import alpha_summary
from sublens.experiments.distill.config import DistillConfig
from sublens.experiments.distill.loading import Setup, Teacher, Texts, load, system_in_effect
from sublens.experiments.distill.maps import MapExample, student_map
from sublens.experiments.distill.results import (
    ARM_TEACHER,
    ArmRecord,
    DataRecord,
    DistillResults,
    FitRecord,
    Initial,
    PreferenceRecord,
    SeedStudent,
    ShdRecord,
    TeacherRecord,
)
from sublens.malloc import release_freed_memory
from sublens.models import LoadedModel
from sublens.preference import evaluate_preference
from sublens.result_records import TrainingSummary
from sublens.training import TrainResult, train, train_summary
from sublens.training_data import tokenizer_pad_id

# The loss's own series kept in results.json: the per-layer KLs (kl_L<s>) of every step stay in
# the student's train_result.json beside its checkpoint; the fit gives them before and after.
SUMMARY_CURVES = ("shd", "alpha_mean")
FOLLOWER_RESULTS: dict[str, Any] = {"partial": True}  # what a rank > 0 returns; never written


# ---- the initial student -------------------------------------------------------------------
def fit_targets(setup: Setup, student: LoadedModel) -> dict[str, FitSet]:
    """Each teacher's squeezed maps on the fit texts, computed once for every student state."""
    config = setup.config
    with setup.run.timed("fit_targets"):
        return {
            role: FitSet.build(
                t.shd,
                t.fit,
                config.fit_batch_size,
                config.shd.temperature,
                tokenizer_pad_id(student.tokenizer),
                config.shd.kl_direction,
            )
            for role, t in setup.teachers.items()
        }


def measure(
    setup: Setup, lm: LoadedModel, fitsets: dict[str, FitSet], tag: str, seed: int
) -> tuple[dict[str, FitRecord], PreferenceRecord]:
    """A student's KL to every teacher's squeezed maps on the fit texts, and its preference."""
    with setup.run.timed(f"fit:{tag}"):
        fit = measure_fit(lm.model, lm.adapter, fitsets)
    with setup.run.timed(f"preference:{tag}"):
        preference = evaluate_preference(lm, setup.config.preference, None, seed)
    return ({role: FitRecord.model_validate(f) for role, f in fit.items()}, PreferenceRecord.model_validate(preference))


def first_results(
    setup: Setup,
    texts: Texts,
    specs: dict[str, str],
    fitsets: dict[str, FitSet],
    fit: dict[str, FitRecord],
    preference: PreferenceRecord,
) -> DistillResults:
    """The results before any student is trained: the set-up, the α and the initial student."""
    config, teachers = setup.config, setup.teachers
    return DistillResults(
        partial=True,
        student=config.student,
        teachers={
            role: TeacherRecord.model_validate(
                {"spec": t.spec, **system_in_effect(t.lm, t.settings, texts.fit[0]), **t.shd.describe()}
            )
            for role, t in teachers.items()
        },
        data=data_record(texts.provenance, teachers),
        shd=ShdRecord.model_validate(config.shd.model_dump(mode="json")),
        alphas={
            role: {str(s): alpha_summary(phases) for s, phases in fs.alphas().items()} for role, fs in fitsets.items()
        },
        fit={"initial": fit},
        arms={},
        checkpoints={},
        seeds=config.training_seeds,
        per_seed={},
        notes=same_teacher_note(config, specs),
        initial=Initial(preference=preference),
    )


def data_record(provenance: dict[str, Any], teachers: dict[str, Teacher]) -> DataRecord:
    train = next(iter(teachers.values())).train
    return DataRecord(
        **provenance,
        student_tokens=int(sum(a.n_student for a in train)),
        answer_tokens=int(sum(a.n_student - a.n_prompt for a in train)),
        mean_student_tokens=float(np.mean([a.n_student for a in train])),
        mean_teacher_tokens={r: float(np.mean([a.n_teacher for a in t.train])) for r, t in teachers.items()},
        identity_alignment={r: all(a.identity for a in t.train) for r, t in teachers.items()},
    )


def same_teacher_note(config: DistillConfig, specs: dict[str, str]) -> list[str]:
    if specs["biased"] == specs["base"] and config.teacher == config.base_teacher.model_copy(
        update={"model": config.teacher.model}
    ):
        return [
            "The biased and base teachers are the same model read the same way: shd_biased and "
            "shd_base are the same experiment."
        ]
    return []


# ---- the students ----------------------------------------------------------------------------
def arm_tag(config: DistillConfig, arm: str, seed: int) -> str:
    return arm if len(config.training_seeds) == 1 else f"{arm}:seed{seed}"


def train_student(setup: Setup, seed: int, arm: str) -> tuple[LoadedModel, TrainResult]:
    """One arm's student for one training seed, trained from the initial weights (every rank of
    a launch calls this for the same arm and seed: the steps are data parallel)."""
    config, run = setup.config, setup.run
    lm = load(config.student, config, run)
    train_config = config.train.model_copy(update={"seed": seed, "extra_loss_weight": config.shd.beta})
    one_seed = len(config.training_seeds) == 1
    out_dir = run.artifact(f"checkpoints/{arm}" if one_seed else f"checkpoints/{arm}/seed{seed}")
    role = ARM_TEACHER[arm]
    with run.timed(f"train:{arm_tag(config, arm, seed)}"):
        if role is None:
            result = train(
                lm.model, lm.tokenizer, [a.example() for a in setup.texts], train_config, out_dir, adapter=lm.adapter
            )
        else:
            teacher = setup.teachers[role]
            loss = ShdLoss(teacher.shd, teacher.train, config.shd.temperature, config.shd.kl_direction)
            with loss.attached(lm.model, lm.adapter):
                result = train(
                    lm.model,
                    lm.tokenizer,
                    [a.example() for a in teacher.train],
                    train_config,
                    out_dir,
                    extra_loss=loss,
                    adapter=lm.adapter,
                )
    return lm, result


def training_summary(result: TrainResult) -> TrainingSummary:
    """`train_summary`, with the loss's own series narrowed to SUMMARY_CURVES."""
    summary = train_summary(result)
    kept = {name: series for name, series in summary.extra_curves.items() if name in SUMMARY_CURVES}
    return summary.model_copy(update={"extra_curves": kept})


def train_and_measure(
    setup: Setup,
    fitsets: dict[str, FitSet],
    seed: int,
    arm: str,
    example: MapExample,
    maps: dict[str, np.ndarray],
    results: DistillResults,
) -> DistillResults:
    """Train one arm's student for one seed, measure it, save; the first seed's students also
    give the map figure their maps (added to `maps`)."""
    tag = arm_tag(setup.config, arm, seed)
    lm, result = train_student(setup, seed, arm)
    fit, preference = measure(setup, lm, fitsets, tag, seed)
    first = seed == setup.config.training_seeds[0]
    if first:
        maps[arm] = student_map(lm, example)
    checkpoint = str(Path(result.model_dir).relative_to(setup.run.path)) if result.model_dir else None
    student = SeedStudent(train=training_summary(result), preference=preference, fit=fit)
    results = with_student(results, seed, arm, student, first, tag, checkpoint)
    setup.run.save_results(results)
    setup.team.sync(f"{tag} measured")
    del lm
    release_freed_memory()  # the next student's training starts from the live tensors only
    return results


def with_student(
    results: DistillResults, seed: int, arm: str, student: SeedStudent, first: bool, name: str, checkpoint: str | None
) -> DistillResults:
    """The results with one more trained student: under its seed, and where it is the first
    seed's also as the arm's student (the figures and the tables show those)."""
    by_seed = {**results.per_seed.get(str(seed), {}), arm: student}
    update: dict[str, Any] = {"per_seed": {**results.per_seed, str(seed): by_seed}}
    if first:
        update["fit"] = {**results.fit, arm: student.fit}
        update["arms"] = {
            **results.arms,
            arm: ArmRecord(teacher=ARM_TEACHER[arm], train=student.train, preference=student.preference, seed=seed),
        }
    if checkpoint is not None:
        update["checkpoints"] = {**results.checkpoints, name: checkpoint}
    return results.model_copy(update=update)


def follow(setup: Setup) -> dict[str, Any]:
    """A rank > 0 of a launch: joins every student's training steps, in rank 0's order."""
    gc.collect()  # the student this rank loaded is rank 0's to measure
    setup.team.sync("initial student measured")
    for seed in setup.config.training_seeds:
        for arm in setup.config.arms:
            train_student(setup, seed, arm)
            setup.team.sync(f"{arm_tag(setup.config, arm, seed)} measured")
            release_freed_memory()  # as rank 0 does after each student
    return FOLLOWER_RESULTS
