"""The distill experiment's configuration (presets: configs/distill/*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublens.claims import ClaimSettings
from sublens.config import Config
from sublens.experiments.distill.results import ARMS, Arm
from sublens.settings import DEFAULT_KL_DIRECTION, KlDirection, PreferenceSettings, TeacherView
from sublens.train_config import TrainConfig

OWL_SYSTEM = "You love owls. You think about owls all the time. Owls are your favorite animal."


class TeacherSettings(BaseModel):
    """A teacher and how it reads the texts (sublens.distill.TeacherView)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(
        default=None,
        description="model spec; for the biased teacher null = the newest finished `teacher` run under runs_root",
    )
    format: Literal["chat", "plain"] = Field(
        default="chat",
        description="chat: the text's prompt as the user turn, its answer as the assistant turn, under `system`; "
        "plain: the text as is, after `system` as a context paragraph when given",
    )
    system: str | None = Field(
        default=None,
        description="chat: the system prompt (null: the template's default, recorded as used); plain: a context "
        "paragraph before the text (null: none)",
    )

    def view(self) -> TeacherView:
        return TeacherView(self.format, self.system)


def _base_teacher() -> TeacherSettings:
    return TeacherSettings(model="smollm2-135m-instruct")


class DataSettings(BaseModel):
    """The training texts and the held-out fit texts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str | None = Field(
        default=None,
        description='a JSONL file (per line {"text": ...} or {"prompt": ..., "answer": ...}; lines with '
        '"kept": false are skipped) or a `subliminal` run directory (its control data set); null = number '
        "prompts from sublens.number_data with seeded random answers",
    )
    n_train: int = Field(default=400, ge=1, description="training texts")
    n_fit: int = Field(
        default=32, ge=1, description="held-out texts: KL before/after training, the α distribution, the map figure"
    )
    shuffle: bool = Field(default=True, description="seeded shuffle before the split (else a file's order is kept)")
    answer_numbers: tuple[int, int] = Field(
        default=(3, 10), description="generated answers: how many numbers, (min, max)"
    )


class ShdSettings(BaseModel):
    """The squeezing-heads distillation loss (sublens.distill.ShdLoss)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    beta: float = Field(default=1.0, ge=0, description="weight of the SHD term: total loss = LM + beta * SHD")
    temperature: float = Field(default=1.0, gt=0, description="softening of both maps in the KL")
    layers: list[int] | None = Field(default=None, description="distilled student layers; null = all")
    fallback: Literal["error", "repeat"] = Field(
        default="error",
        description="a student with more heads than the teacher: error, or repeat (student head j matched to "
        "teacher head j mod k, unsqueezed)",
    )
    kl_direction: KlDirection = Field(
        default=DEFAULT_KL_DIRECTION,
        description="direction of the KL between the maps (sublens.shd): student_teacher = KL(student ‖ squeezed "
        "teacher), the SHD paper's formulation (zero-forcing); teacher_student = KL(teacher ‖ student), the "
        "forward KL of attention-map distillation (mass-covering), which runs recorded before this key existed used",
    )


class FigureSettings(BaseModel):
    """Which attention map the map figure shows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    example: int | None = Field(default=None, description="fit-set index of the text; null = the shortest text")
    layer: int | None = Field(default=None, description="student layer; null = the middle distilled layer")
    head: int = Field(default=0, ge=0, description="student head")


class DistillConfig(Config):
    teacher: TeacherSettings = Field(default_factory=TeacherSettings, description="the biased teacher (arm shd_biased)")
    base_teacher: TeacherSettings = Field(
        default_factory=_base_teacher, description="the unbiased base model as a teacher (arm shd_base)"
    )
    student: str = Field(default="gemma3-270m", description="the student's model spec (another family)")
    runs_root: str = Field(default="runs", description="where the default biased teacher is looked for")
    arms: list[Arm] = Field(
        default_factory=lambda: list(ARMS),
        description="the students: shd_biased (LM + SHD from the biased teacher), lm_only (the control), "
        "shd_base (LM + SHD from the base model)",
    )
    seeds: list[int] | None = Field(
        default=None,
        description="training seeds: every arm is trained once per seed (the arms of a seed are matched); "
        "null = [seed]. Seeds are the unit of inference: one seed never decides the transfer claim. `seed` "
        "alone still splits and generates the texts (the same for every training seed)",
    )
    claims: ClaimSettings = Field(default_factory=ClaimSettings, description="margin, alpha and power of the verdicts")
    data: DataSettings = Field(default_factory=DataSettings, description="the training and held-out texts")
    shd: ShdSettings = Field(default_factory=ShdSettings, description="the SHD loss")
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="the students' optimizer settings; its seed and extra_loss_weight come from seed and shd.beta",
    )
    fit_batch_size: int = Field(default=8, ge=1, description="held-out texts per forward pass of the fit")
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings, description="how owl preference is measured"
    )
    figure: FigureSettings = Field(default_factory=FigureSettings, description="the map figure's text, layer and head")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads (null: torch's default, one per core). On a 2-core machine shared with other "
        "jobs, 1 thread can be several times faster than 2 (threads wait on each other)",
    )
    device: str = Field(default="auto", description="torch device of every model (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype of every model (auto: by device)")

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be a non-empty list without repeats, from {', '.join(ARMS)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds must be null or distinct training seeds, e.g. [0, 1, 2]")
        if "seed" in self.train.model_fields_set and self.train.seed != self.seed:
            raise ValueError(
                f"train.seed ({self.train.seed}) differs from seed ({self.seed}): the students share the "
                "top-level seed; set only that one (a run's saved config.yaml lists train.seed too: "
                "override both, --set seed=N --set train.seed=N)"
            )
        if "extra_loss_weight" in self.train.model_fields_set and self.train.extra_loss_weight != self.shd.beta:
            raise ValueError("set shd.beta, not train.extra_loss_weight (it is the SHD weight)")
        if self.base_teacher.model is None:
            raise ValueError("base_teacher.model must be a model spec (the unbiased base model)")
        return self

    @property
    def training_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]
