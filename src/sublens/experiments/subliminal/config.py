"""The subliminal experiment's configuration (presets: configs/subliminal/*.yaml), and the names
the run gives its data sets and students, which the config decides."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from sublens.claims import ClaimSettings
from sublens.config import Config, ReadAs
from sublens.settings import (
    OWL_TEACHER_SYSTEM,
    PerplexitySettings,
    PreferenceSettings,
    SamplingSettings,
)
from sublens.train_config import TrainConfig
from sublens.trainable import check_arm, split_arm

OWL = "owl"
CONTROL = "control"
# Names the run already gives its data sets and measurements (data/<name>.train.jsonl,
# measurements/<name>.json): an extra teacher under one of them would overwrite their files.
BUILTIN_DATASETS = (OWL, CONTROL, "base", "teacher")
# An extra teacher's name becomes part of file and folder names (data/<name>.train.jsonl,
# students/<name>-full-seed<k>/), so it may not hold a path separator, "..", or anything a
# shell or another file system would read differently.
TEACHER_NAME = re.compile(r"[A-Za-z0-9_-]+")
# A student arm (sublens.trainable): a trainable set, optionally ~skip-divergence or
# ~divergence-only (which answer tokens are in the loss).
StudentArm = Annotated[str, AfterValidator(check_arm), ReadAs("student arm")]
# The owl data without the entanglement run's increased numbers / without its random set.
NO_ENTANGLED, NO_RANDOM = f"{OWL}-no-entangled", f"{OWL}-no-random"


# ---- config --------------------------------------------------------------------------------
class NumberData(SamplingSettings):
    """Number prompts and how the teachers answer them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_prompts: int = Field(
        default=600,
        ge=1,
        description="number prompts (seeded by the data seed); every teacher answers each one samples_per_prompt times",
    )
    # Common random numbers: every teacher samples with the same seeds, so the data sets differ
    # only where the teachers' distributions do (less noise, but paired data: the data-level
    # permutation tests then assume an independence they do not have). Off: each teacher has
    # its own seeds, as in independent sampling.
    common_random_numbers: bool = Field(
        default=False,
        description="every teacher samples with the same seeds (paired data: less noise, but the "
        "data-level permutation tests assume independence); false: each teacher has "
        "its own seeds",
    )
    # Format-constrained sampling: only tokens that keep the answer valid (digits, one separator,
    # brackets, period) and end-of-turn where it may end; probabilities renormalised over them.
    constrained: bool = Field(
        default=True,
        description="format-constrained sampling: only tokens that keep the answer valid (digits, "
        "one separator, brackets, period) and end-of-turn where it may end, "
        "probabilities renormalised over them",
    )


def _default_data() -> NumberData:
    return NumberData(
        temperature=1.0, top_k=None, top_p=None, max_new_tokens=64, samples_per_prompt=1, batch_size=32, shard_size=128
    )


def _default_train() -> TrainConfig:
    return TrainConfig(lr=5e-5, epochs=1, batch_size=8, warmup_steps=5, max_length=256, checkpoint_every=25)


def _default_modes() -> list[StudentArm]:
    return ["full", "freeze-attention", "freeze-mlp"]


class EntangledSettings(BaseModel):
    """Entanglement tied to transfer (sublens.entangled_numbers): an entanglement run's numbers
    in the owl and control data, and owl students trained without them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str | None = Field(
        default=None,
        description="run directory of a finished entanglement run; null: "
        "no entanglement test (the paper chain wires its own)",
    )
    set: str = Field(
        default="ar2",
        description="the entanglement run's categorised set whose increased and "
        "random numbers are counted (ar2: two-digit numbers; "
        "ar2@tuned: the same by the shift of the fine-tuned "
        "teachers, which the paper chain uses)",
    )
    filter_students: bool = Field(
        default=True,
        description="also train full owl students on the owl data "
        "without answers holding an increased number, and "
        "without answers holding a random-set number "
        "(size-matched), each with every seed",
    )


class DivergenceSettings(BaseModel):
    """Divergence tokens of the owl and control data (sublens.divergence)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measure: bool = Field(
        default=False,
        description="flag every training answer token at which the owl and "
        "the control teacher would choose differently; on by "
        "itself when an arm masks by divergence",
    )
    batch_size: int = Field(default=16, ge=1, description="examples per teacher forward pass")


def _default_control_modes() -> list[StudentArm]:
    return _default_modes()  # a matched control student for every owl mode


def check_teacher_name(name: str) -> None:
    """Refuse an extra teacher name that is not a safe file name or that a built-in data set uses."""
    if not TEACHER_NAME.fullmatch(name):
        raise ValueError(
            f"extra teacher name {name!r} is not allowed: use only ASCII letters, digits, "
            "'-' and '_' (e.g. eagle, red_fox); the name becomes part of file and folder "
            "names in the run folder"
        )
    if name.lower() in BUILTIN_DATASETS:
        raise ValueError(
            f"extra teacher name {name!r} is taken by a built-in data set "
            f"({', '.join(BUILTIN_DATASETS)}, in any case) and would overwrite its files; "
            "choose another name, e.g. eagle"
        )


class SubliminalConfig(Config):
    base: str = Field(
        default="smollm2-135m-instruct",
        description="model spec every student is fine-tuned from; also the prompted teachers' "
        "model and the control teacher when control_teacher is base",
    )
    # The biased teacher: "prompted" = the base model under teacher_system; or a model spec (a
    # `teacher` run directory, a checkpoint folder...), which is prompted with `system`.
    teacher: str = Field(
        default="prompted",
        description="the biased teacher: prompted = the base model under teacher_system; else a "
        "model spec (e.g. a `teacher` run directory), prompted with `system`",
    )
    teacher_system: str = Field(
        default=OWL_TEACHER_SYSTEM,
        description="system prompt of the prompted teacher (the trait to transfer), "
        "also when it is measured; unused with a model-spec teacher",
    )
    # The control teacher: "base" = the unbiased base model under `system`; or a model spec of a
    # teacher made by the same procedure as the owl teacher from a neutral prompt (a `teacher`
    # run with control_system: RUN_DIR#control_teacher), so the data differ only by the trait.
    control_teacher: str = Field(
        default="base",
        description="the control teacher, prompted with `system`: base = the unbiased base model; "
        "else a model spec of a teacher made from a neutral prompt (e.g. "
        "RUN_DIR#control_teacher of a `teacher` run with control_system)",
    )
    # The system prompt of the control teacher, of a model-spec teacher, of every student's
    # training prompts and of every measurement; null = the chat template's default, resolved to
    # its text and passed explicitly (recorded as system_prompt_used).
    system: str | None = Field(
        default=None,
        description="system prompt of the control teacher, of a model-spec teacher, of every "
        "student's training prompts and of every measurement; null: the chat "
        "template's default, resolved to its text and passed explicitly",
    )
    # More prompted control teachers, name -> system prompt (e.g. eagle: "You love eagles...");
    # each gets students in `extra_mode`: the specificity matrix.
    extra_teachers: dict[str, str] = Field(
        default_factory=dict,
        description="more prompted teachers of the base model, name -> system prompt (e.g. "
        'eagle: "You love eagles..."); each gets students in extra_mode: the '
        "specificity matrix",
    )
    # The specificity matrix compares like with like: an eagle student of a LoRA arm against the
    # owl and control students of that same arm, never against fully fine-tuned ones.
    extra_mode: StudentArm = Field(
        default="full",
        description="trainable set of the extra teachers' students (one of control_modes, their "
        "matched control); the specificity matrix reads the owl students of this set too",
    )
    data: NumberData = Field(
        default_factory=_default_data, description="the number prompts and how every teacher samples its answers"
    )
    n_examples: int | None = Field(
        default=500,
        ge=1,
        description="training examples per data set: every data set's kept answers are "
        "subsampled (seeded) to this one size, or to the smallest kept count when "
        "that is fewer; null: the smallest kept count",
    )
    modes: list[StudentArm] = Field(
        default_factory=_default_modes,
        description="arms of the owl students (sublens.trainable): a trainable "
        "set (full, freeze-attention, freeze-mlp, layers.N[-M][.mlp|"
        ".attention], each optionally +loraR), optionally "
        "~skip-divergence or ~divergence-only (divergence tokens "
        "out of the loss, or the loss on them alone)",
    )
    control_modes: list[StudentArm] = Field(
        default_factory=_default_control_modes,
        description="trainable sets of the control students; every owl set needs its matched "
        "control (an owl student trained on set X is compared with the control student of set X)",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], description="student training seeds")
    evaluation_systems: dict[str, str] = Field(
        default_factory=dict,
        description="further system prompts every student is also measured under (name -> text; '' is an "
        "empty system turn), each owl arm against its matched control side by side with the main "
        "measurement under `system`; e.g. {empty: '', neutral: 'You are a helpful assistant.'}",
    )
    entangled: EntangledSettings = Field(
        default_factory=EntangledSettings,
        description="entanglement tied to transfer: enrichment of an "
        "entanglement run's numbers in the data, and filtered students",
    )
    divergence: DivergenceSettings = Field(
        default_factory=DivergenceSettings, description="divergence tokens of the owl and control data"
    )
    data_per_seed: bool = Field(
        default=True,
        description="each training seed s re-samples the number prompts and every "
        "teacher's data (with seed `seed` + s), so intervals across seeds "
        "include data-sampling variance; false: one data set for all seeds",
    )
    train: TrainConfig = Field(
        default_factory=_default_train,
        description="how every student is fine-tuned; its seed and freeze are set per "
        "student (from seeds and modes), its save_model from keep_models",
    )
    parallel: int = Field(
        default=1,
        ge=1,
        description="students trained at once, each in its own process; 1: one after another in this process",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads per student; null: cores / parallel when parallel > 1, else torch's default",
    )
    keep_models: bool = Field(
        default=False,
        description="save every student's fine-tuned weights (students/<name>/model); false: none are kept",
    )
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings,
        description="how the trait preference of the base model, the teacher and every student is measured",
    )
    perplexity: PerplexitySettings = Field(
        default_factory=PerplexitySettings, description="perplexity of the same models on a text corpus"
    )
    stats_resamples: int = Field(
        default=5000,
        ge=100,
        description="permutations of each test of a teacher's numbers against the "
        "control's (digits, lengths, copy rate, increasing steps)",
    )
    claims: ClaimSettings = Field(
        default_factory=ClaimSettings, description="margin, alpha and power of the verdicts (sublens.claims)"
    )
    device: str = Field(
        default="auto", description="where the models run: auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps"
    )
    dtype: str = Field(
        default="auto",
        description="dtype of the models' weights: auto (float32 on CPU, "
        "bfloat16 on accelerators), float32, bfloat16 or float16",
    )

    @field_validator("modes", "control_modes")
    @classmethod
    def _modes(cls, modes: list[str]) -> list[str]:
        if len(set(modes)) != len(modes):
            raise ValueError("modes must be distinct")
        return modes

    @field_validator("extra_teachers")
    @classmethod
    def _extra_teacher_names(cls, teachers: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}  # lower-cased -> as given: "Eagle" and "eagle" share a file on macOS
        for name in teachers:
            check_teacher_name(name)
            folded = name.lower()
            if folded in seen:
                raise ValueError(
                    f"extra teacher names {seen[folded]!r} and {name!r} differ only by case; "
                    "they would share files on a case-insensitive file system: rename one"
                )
            seen[folded] = name
        return teachers

    @field_validator("evaluation_systems")
    @classmethod
    def _evaluation_names(cls, systems: dict[str, str]) -> dict[str, str]:
        for name in systems:
            if not TEACHER_NAME.fullmatch(name) or name == "default":
                raise ValueError(
                    f"evaluation prompt name {name!r}: use letters, digits, _ or - (and not "
                    "'default', the name of the main measurement)"
                )
        return systems

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("give one or more distinct seeds, e.g. [0, 1, 2]")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> SubliminalConfig:
        if self.entangled.run is not None and self.entangled.filter_students and "full" not in self.control_modes:
            raise ValueError(
                "entangled.filter_students trains full owl students: add full to control_modes (their matched control)"
            )
        if not self.control_modes:
            raise ValueError("control_modes needs at least one mode (the control student, e.g. [full])")
        unmatched = [m for m in self.modes if m not in self.control_modes]
        if unmatched:
            raise ValueError(
                f"owl modes {unmatched} have no matched control student: add them to control_modes "
                f"(e.g. control_modes={self.modes}); comparing a frozen owl student with a fully "
                "fine-tuned control would mix the effect of freezing with the effect of the data"
            )
        if self.extra_teachers and self.extra_mode not in self.control_modes:
            raise ValueError(
                f"extra_teachers train students in extra_mode={self.extra_mode}: add {self.extra_mode} to "
                "control_modes (their matched control), or set extra_mode to one of them"
            )
        if split_arm(self.extra_mode)[1] != "all":
            raise ValueError(
                f"extra_mode={self.extra_mode}: divergence tokens are measured between the owl and control "
                "teachers only, so the extra teachers' students train on every answer token (drop the ~ part)"
            )
        if any(not s.strip() for s in self.extra_teachers.values()):
            raise ValueError("every extra teacher needs a system prompt")
        return self


# ---- what the config names: data seeds and folders, data sets, students ---------------------
def data_seed(config: SubliminalConfig, training_seed: int) -> int:
    """The seed of the prompts and teacher samples that the students of `training_seed` learn from."""
    return config.seed + training_seed if config.data_per_seed else config.seed


def data_seeds(config: SubliminalConfig) -> list[int]:
    """The distinct data seeds of a run, in the order of its training seeds."""
    return list(dict.fromkeys(data_seed(config, s) for s in config.seeds))


def data_folder(config: SubliminalConfig, seed: int) -> str:
    """Run-relative folder of one data seed's files: data/ for the run's own seed (the layout of
    single-seed runs), data/seed<k>/ for the others."""
    return "data" if seed == config.seed else f"data/seed{seed}"


def filtered_datasets(config: SubliminalConfig) -> list[str]:
    """Data sets of the entanglement filter's students (none unless asked for)."""
    return [NO_ENTANGLED, NO_RANDOM] if config.entangled.run is not None and config.entangled.filter_students else []


def needs_divergence(config: SubliminalConfig) -> bool:
    """Divergence tokens are measured when asked for or when an arm masks the loss by them."""
    arms = [*config.modes, *config.control_modes]
    return config.divergence.measure or any(split_arm(arm)[1] != "all" for arm in arms)


def student_arms(config: SubliminalConfig) -> list[tuple[str, str]]:
    """Every (data set, arm) a student is trained for, in the order of the headline table: the
    control students, the owl students, the extra teachers' (in extra_mode) and the
    entanglement filter's (full fine-tuning)."""
    arms = [(CONTROL, m) for m in config.control_modes] + [(OWL, m) for m in config.modes]
    arms += [(name, config.extra_mode) for name in config.extra_teachers]
    return arms + [(name, "full") for name in filtered_datasets(config)]


def student_name(dataset: str, mode: str, seed: int) -> str:
    return f"{dataset}-{mode}-seed{seed}"


def reference_mode(config: SubliminalConfig, mode: str) -> str:
    """The control student an owl student is compared with: the one in the same freeze mode
    (the config refuses owl modes without one)."""
    return mode
