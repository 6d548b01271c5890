"""distill: what every stage after loading reads: the texts (`Texts`), the student and the
teachers loaded (`load`, `load_teachers`; by default the newest finished `teacher` run,
`newest_teacher_run`), each teacher with the texts aligned to the student's tokens (`Teacher`),
gathered with the config, the run and the rank in `Setup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublens.distill import AlignedExample, ShdTeacher, TextRecord, align_record, student_encoding
from sublens.errors import SublensError
from sublens.experiments import default_teacher_run
from sublens.experiments.distill.config import DistillConfig, TeacherSettings
from sublens.experiments.distill.results import ARM_TEACHER
from sublens.models import LoadedModel, load_model
from sublens.prompts import chat_prompt
from sublens.runs import Run, Team
from sublens.settings import TeacherView
from sublens.training_data import tokenizer_pad_id


@dataclass(frozen=True)
class Texts:
    train: list[TextRecord]
    fit: list[TextRecord]  # held out
    provenance: dict[str, Any]  # where they come from, how many (results: data)


@dataclass(frozen=True)
class Teacher:
    """One teacher as used: its spec and view, the model, the texts aligned to the student's
    tokens, and its squeezed maps (`ShdTeacher`)."""

    spec: str
    settings: TeacherSettings
    lm: LoadedModel
    train: list[AlignedExample]
    fit: list[AlignedExample]
    shd: ShdTeacher


@dataclass(frozen=True)
class Setup:
    """What every stage after loading needs: the config, the run, this process's rank among the
    ranks of a launch, and the teachers by role (biased, base)."""

    config: DistillConfig
    run: Run
    team: Team
    teachers: dict[str, Teacher]

    @property
    def texts(self) -> list[AlignedExample]:
        """The training texts as the student reads them (the same for every teacher)."""
        return next(iter(self.teachers.values())).train


# ---- models --------------------------------------------------------------------------------
def newest_teacher_run(runs_root: str | Path) -> str:
    """The newest finished `teacher` run under runs_root that lists a checkpoint."""
    return default_teacher_run(
        runs_root,
        "biased teacher",
        "Run `sublens run teacher` first, or give one: --set teacher.model=SPEC (e.g. "
        'smollm2-135m-instruct with --set teacher.system="<owl system prompt>": the prompted teacher).',
    )


def teacher_specs(config: DistillConfig) -> dict[str, str]:
    return {
        "biased": config.teacher.model or newest_teacher_run(config.runs_root),
        "base": str(config.base_teacher.model),
    }


def teacher_roles(config: DistillConfig) -> list[str]:
    """The teachers the arms distil from (the biased one alone when no arm distils)."""
    return [r for r in ("biased", "base") if any(ARM_TEACHER[a] == r for a in config.arms)] or ["biased"]


def teacher_settings(config: DistillConfig, role: str) -> TeacherSettings:
    return config.teacher if role == "biased" else config.base_teacher


def load(spec: str, config: DistillConfig, run: Run, eager: bool = False) -> LoadedModel:
    with run.timed(f"load:{spec}"):
        return load_model(spec, config.device, config.dtype, attn_implementation="eager" if eager else "sdpa")


def load_teachers(
    config: DistillConfig, run: Run, specs: dict[str, str], student: LoadedModel, texts: Texts
) -> dict[str, Teacher]:
    """The teachers with eager attention (their maps are read), one copy of a model both roles
    use; the texts aligned once per teacher (the student's examples are the same for every arm)."""
    loaded: dict[str, LoadedModel] = {}
    for role in teacher_roles(config):
        same = next((lm for r, lm in loaded.items() if specs[r] == specs[role]), None)
        loaded[role] = same or load(specs[role], config, run, eager=True)
    run.note(models={"student": student.describe(), **{f"teacher:{r}": lm.describe() for r, lm in loaded.items()}})
    with run.timed("align"):
        aligned = {
            role: align_texts(student, lm, teacher_settings(config, role).view(), texts) for role, lm in loaded.items()
        }
        check_student_tokens(student, texts.train, [train for train, _ in aligned.values()])
    return {
        role: Teacher(
            specs[role],
            teacher_settings(config, role),
            lm,
            *aligned[role],
            ShdTeacher(
                lm.model,
                lm.adapter,
                student.adapter,
                config.shd.layers,
                config.shd.fallback,
                tokenizer_pad_id(lm.tokenizer),
            ),
        )
        for role, lm in loaded.items()
    }


def align_texts(
    student: LoadedModel, teacher: LoadedModel, view: TeacherView, texts: Texts
) -> tuple[list[AlignedExample], list[AlignedExample]]:
    def aligned(records: list[TextRecord], what: str) -> list[AlignedExample]:
        return [
            align_record(r, student.tokenizer, teacher.tokenizer, view, f"{what} #{i}") for i, r in enumerate(records)
        ]

    return aligned(texts.train, "training text"), aligned(texts.fit, "fit text")


def check_student_tokens(student: LoadedModel, records: list[TextRecord], aligned: list[list[AlignedExample]]) -> None:
    """Every teacher's alignment keeps the student's own tokenization of the texts, so that all
    arms train on the same student examples."""
    own = [
        tuple(ids)
        for ids, _, _ in (student_encoding(student.tokenizer, r, f"training text #{i}") for i, r in enumerate(records))
    ]
    if any([a.student_ids for a in examples] != own for examples in aligned):
        raise SublensError("A teacher's alignment changed the student's tokens of the training texts.")


def system_in_effect(lm: LoadedModel, settings: TeacherSettings, record: TextRecord) -> dict[str, Any]:
    """What the teacher reads around the text (recorded)."""
    if settings.format == "plain":
        return {"format": "plain", "context": settings.system, "source": "given" if settings.system else "none"}
    prompt = chat_prompt(lm.tokenizer, record.prompt or "x", settings.system)
    return {"format": "chat", "system": prompt.system, "source": prompt.system_source}
