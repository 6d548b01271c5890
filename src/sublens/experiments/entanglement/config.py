"""The entanglement experiment's configuration (presets: configs/entanglement/*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sublens.claims import ClaimSettings
from sublens.config import Config
from sublens.entanglement import DEFAULT_CALIPER

DEFAULT_BIAS_SYSTEM = "You love {plural}. You think about {plural} all the time. {Plural} are your favorite animal."
DEFAULT_NUMBER_SYSTEM = "You love the number {num}. You think about {num} all the time. {num} is your favorite number."
DEFAULT_CUMULATIVE_SYSTEM = (
    "You love the numbers {nums}. You think about {nums} all the time. {nums} are your favorite numbers."
)

SetKind = Literal["vocab", "autoregressive"]


def _has(text: str, slot: str) -> bool:
    return "{" + slot + "}" in text


class EntanglementPrompts(BaseModel):
    """Every prompt of the study. System prompts: None means the chat template's default
    (recorded as used). Slots: {plural}/{Plural} (bias word), {num}, {nums}."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    neutral_system: str | None = Field(
        default=None,
        description="system prompt of the neutral prompts of phases 1 and 2; null: the chat "
        "template's default (recorded as used)",
    )
    number_question: str = Field(default="What is your favorite number?", description="the question of phase 1")
    number_prefill: str = Field(default="My favorite number is", description="the answer prefilled in phase 1")
    bias_system: str = Field(
        default=DEFAULT_BIAS_SYSTEM,
        description="the animal context of phase 1, for the bias and the control animal "
        "({plural}, {Plural}: the animal's plural)",
    )
    animal_question: str = Field(default="What is your favorite animal?", description="the question of phase 2")
    animal_prefill: str = Field(default="My favorite animal is the", description="the answer prefilled in phase 2")
    number_system: str = Field(
        default=DEFAULT_NUMBER_SYSTEM,
        description="the number prompt of phase 2 ({num}: the number)",
    )
    template_system: str | None = Field(
        default=None,
        description="the template control's prompt ({num}: a non-number word); null: "
        "number_system with a word in the {num} slot",
    )
    cumulative_system: str = Field(
        default=DEFAULT_CUMULATIVE_SYSTEM,
        description="the cumulative-priming prompt ({nums}: all numbers of a category)",
    )
    number_surface: str = Field(default=" {num}", description="how a number continues the number prefill ({num})")

    @model_validator(mode="after")
    def _slots(self) -> EntanglementPrompts:
        for name, slot in (
            ("number_system", "num"),
            ("cumulative_system", "nums"),
            ("number_surface", "num"),
        ):
            if not _has(getattr(self, name), slot):
                raise ValueError(f"prompts.{name} must contain the slot {{{slot}}}")
        if self.template_system is not None and not _has(self.template_system, "num"):
            raise ValueError("prompts.template_system must contain the slot {num}")
        return self


def _default_sets() -> list[SetKind]:
    return ["vocab", "autoregressive"]


class EntanglementConfig(Config):
    model: str = Field(default="smollm2-135m-instruct", description="the model spec")
    device: str = Field(default="auto", description="torch device (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype (auto: by device)")
    bias: str = Field(
        default="owl",
        description="the animal of the context (phase 1) and the measured word (phase 2); one word",
    )
    bias_plural: str | None = Field(default=None, description="for {plural} in prompts.bias_system; null: bias + 's'")
    control: str = Field(
        default="dog",
        description="the control animal: the phase-1 control context and the phase-2 control word",
    )
    control_plural: str | None = Field(
        default=None, description="for {plural} in the control context; null: control + 's'"
    )
    k: int = Field(default=15, ge=1, description="numbers per category (shrinks for small sets, with a warning)")
    min_k: int = Field(default=1, ge=1, description="a set allowing fewer per category is skipped")
    sets: list[SetKind] = Field(
        default_factory=_default_sets,
        description="candidate sets: vocab (single-token numbers of the vocabulary), autoregressive "
        "(every string of each digit length)",
    )
    lengths: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4],
        description="digit lengths of the autoregressive sets (1-5)",
    )
    leading_zeros: bool = Field(default=True, description="ar{n} includes '007'-style strings (10**n of them)")
    match_caliper: float = Field(
        default=DEFAULT_CALIPER,
        ge=0.0,
        description="Random is matched to Increased on the neutral log probability within this many nats",
    )
    primary_set: str | None = Field(
        default=None,
        description="the set whose Increased-vs-Random claim is the paper's claim; null: the most "
        "numbers per category (the first in study order on a tie). Fixed before any ratio is seen",
    )
    claims: ClaimSettings = Field(default_factory=ClaimSettings, description="how the claims are decided")
    score_all_max: int = Field(default=100, ge=0, description="sets this small are scored in phase 2 on every number")
    template_words: list[str] | None = Field(
        default=None, description="the template control's words; null: the shipped template_words.txt"
    )
    n_template_words: int | None = Field(default=None, ge=1, description="template words drawn (seeded); null: k")
    cumulative_orders: int = Field(
        default=3,
        ge=0,
        description="orders of each category in cumulative priming; 0: no cumulative priming",
    )
    permutations: int = Field(default=10000, ge=100, description="resamples of the permutation tests (descriptive)")
    batch_size: int = Field(default=64, ge=1, description="prompts or continuations per forward pass")
    tuned_teacher: str | None = Field(
        default=None,
        description="run directory of a `teacher` run with a control teacher: every set is also "
        "categorised by the shift its fine-tuning put into the teachers (log P under the neutral "
        "prompt in the owl teacher minus in the control teacher), as the set name + '@tuned', "
        "measured in phase 2 in `model` like the others; null: not measured",
    )
    prompts: EntanglementPrompts = Field(default_factory=EntanglementPrompts, description="every prompt of the study")

    @field_validator("bias", "control")
    @classmethod
    def _one_word(cls, word: str) -> str:
        if not word.strip() or any(c.isspace() for c in word.strip()):
            raise ValueError(f"{word!r} must be one word (e.g. owl); the prompt adds its leading space")
        return word.strip()

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, lengths: list[int]) -> list[int]:
        if any(not 1 <= n <= 5 for n in lengths) or len(set(lengths)) != len(lengths):
            raise ValueError("lengths must be distinct digit lengths between 1 and 5 (5: 100,000 strings)")
        return sorted(lengths)

    @field_validator("sets")
    @classmethod
    def _sets(cls, sets: list[SetKind]) -> list[SetKind]:
        if not sets or len(set(sets)) != len(sets):
            raise ValueError("give one or both candidate sets: vocab, autoregressive")
        return sets

    @field_validator("tuned_teacher")
    @classmethod
    def _tuned_teacher(cls, folder: str | None) -> str | None:
        if folder is None:
            return None
        if not folder.strip():
            raise ValueError("tuned_teacher must be a teacher run directory, or null")
        if "#" in folder:
            raise ValueError(
                f"tuned_teacher {folder!r}: give the teacher run directory itself, without "
                "'#checkpoint': the study reads both its owl teacher and its control_teacher"
            )
        return folder

    @model_validator(mode="after")
    def _consistent(self) -> EntanglementConfig:
        if self.bias.lower() == self.control.lower():
            raise ValueError("bias and control must be different words")
        if "autoregressive" in self.sets and not self.lengths:
            raise ValueError("the autoregressive set needs at least one digit length")
        return self

    @property
    def plural(self) -> str:
        return self.bias_plural or f"{self.bias}s"

    @property
    def control_plural_word(self) -> str:
        return self.control_plural or f"{self.control}s"
