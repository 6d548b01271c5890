"""The mechanistic experiment's configuration (presets: configs/mechanistic/*.yaml).

Prompt choices (the texts are recorded in results.json):

- **Residual statements** ("My favorite animal is the owl", "My favorite number is 87") are
  fed *raw* by default (``residual.format: raw``): the tokenizer's own special tokens, no chat
  template. The representation is then that of the statement itself, the same text for chat and
  base models (Gemma-3-270M has no template), with no template default system prompt mixed in.
  ``format: chat`` puts each statement into the assistant turn instead (prefilled after
  ``animal_question`` / ``number_question``, system prompt ``residual.system``; base models get
  the completion format).
- **Attribution prompt**: the entanglement study's phase-2 prompt ("You love the number {number}.
  ..." as the system prompt, "What is your favorite animal?", prefilled "My favorite animal is
  the"), through the chat template (completion format for base models); the answer position is
  the last token. The same prompt with ``attribution.neutral_system`` gives the reference for the
  measured (first-token) bias ratio.
- **Attention prompts** ("My favorite number is 87. My favorite animal is the owl.") use the
  residual format; attention is read from the final position (the closing ".").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sublens.config import Config

DEFAULT_NUMBERS = tuple(str(n) for n in range(10, 100))
NUMBER_SYSTEM = "You love the number {number}. You think about {number} all the time. {number} is your favorite number."

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _as_number(value: Any) -> str:
    text = str(value).strip()
    if not text or not text.isdigit():
        raise ValueError(f"{value!r} is not a number: write digits only (quote numbers with leading zeros: '07')")
    return text


def _placeholders(template: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    for name in required:
        if template.count("{" + name + "}") != 1:
            raise ValueError(f"{template!r} must contain {{{name}}} exactly once")
    try:
        template.format(**{name: "x" for name in allowed})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{template!r}: only the placeholders {allowed} are allowed ({exc})") from exc
    return template


class NumberEntry(BaseModel):
    """One number to analyse, with its category and bias ratio where known."""

    model_config = _FROZEN

    number: str = Field(description="the number, digits only (quote leading zeros: '07')")
    category: str | None = Field(
        default=None,
        description="e.g. increased / decreased / unchanged / random; null: unknown",
    )
    bias_ratio: float | None = Field(
        default=None,
        description="the number's bias ratio if known (e.g. from an entanglement run); "
        "null: the first-token ratio measured here on the attribution prompt",
    )

    @field_validator("number", mode="before")
    @classmethod
    def _number(cls, value: Any) -> str:
        return _as_number(value)


class ResidualPrompts(BaseModel):
    """The statements whose final-position residuals are compared (see the module docstring)."""

    model_config = _FROZEN

    format: Literal["raw", "chat"] = Field(
        default="raw",
        description="raw: the statement alone (the tokenizer's special tokens, no chat template); "
        "chat: the statement as the prefilled answer of the chat template",
    )
    animal: str = Field(
        default="My favorite animal is the {word}",
        description="the animal statement; ends with {word} (its final position is the word)",
    )
    number: str = Field(
        default="My favorite number is {number}",
        description="the number statement; ends with {number} (its final position is the last digit)",
    )
    animal_question: str = Field(
        default="What is your favorite animal?",
        description="chat format only: the user turn the animal statement answers",
    )
    number_question: str = Field(
        default="What is your favorite number?",
        description="chat format only: the user turn the number statement answers",
    )
    system: str | None = Field(
        default=None,
        description="chat format only: the system prompt; null: the chat template's own default (recorded as used)",
    )

    @field_validator("animal")
    @classmethod
    def _animal(cls, value: str) -> str:
        if not value.endswith("{word}"):
            raise ValueError("the animal statement must end with {word} (its final position is the word)")
        return _placeholders(value, ("word",), ("word",))

    @field_validator("number")
    @classmethod
    def _number(cls, value: str) -> str:
        if not value.endswith("{number}"):
            raise ValueError("the number statement must end with {number} (its final position is the last digit)")
        return _placeholders(value, ("number",), ("number",))


class AttributionPrompts(BaseModel):
    """The number-priming prompt of the entanglement study's phase 2."""

    model_config = _FROZEN

    system: str = Field(default=NUMBER_SYSTEM, description="the number-priming system prompt; contains {number}")
    user: str = Field(default="What is your favorite animal?", description="the question")
    prefill: str = Field(
        default="My favorite animal is the",
        description="the answer prefilled after the question; the attribution reads its last token",
    )
    neutral_system: str | None = Field(
        default=None,
        description="system prompt of the reference prompt for the measured bias ratio; null: "
        "the chat template's default",
    )

    @field_validator("system")
    @classmethod
    def _system(cls, value: str) -> str:
        if "{number}" not in value:
            raise ValueError("the number-priming system prompt must contain {number}")
        return _placeholders(value, (), ("number",))


class AttentionSettings(BaseModel):
    """The prompts whose attention patterns are read from the final position."""

    model_config = _FROZEN

    template: str = Field(
        default="My favorite number is {number}. My favorite animal is the {word}.",
        description="the attention prompt, with {number} and {word} once each (the residual format)",
    )
    numbers: list[str] = Field(
        default_factory=lambda: ["87"], description="the numbers put into the template, one prompt each"
    )
    plot_heads: int = Field(default=4, ge=0, description="patterns of this many top heads are drawn")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return _placeholders(value, ("number", "word"), ("number", "word"))

    @field_validator("numbers", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise ValueError("give at least one number for the attention prompts")
        return [_as_number(v) for v in value]


class MechanisticConfig(Config):
    model: str = Field(default="smollm2-135m-instruct", description="the model analysed (a model spec)")
    bias: str = Field(default="owl", description="the bias word (one word; prompts add its leading space)")
    control: str = Field(default="dog", description="the control word the bias word is contrasted with")
    numbers: list[NumberEntry] | None = Field(
        default=None,
        description="the numbers: a list (optionally with category and bias ratio); null: the "
        "categorised numbers of entanglement_run, or with neither every two-digit number "
        "(categories unknown)",
    )
    entanglement_run: str | None = Field(
        default=None, description="a finished entanglement run whose categorised numbers are analysed"
    )
    entanglement_set: str | None = Field(
        default=None,
        description="the entanglement run's set; null: the only categorised set, else the 2-digit "
        "set, else the vocabulary set",
    )
    residual: ResidualPrompts = Field(
        default_factory=ResidualPrompts, description="the statements whose residuals are compared"
    )
    attribution: AttributionPrompts = Field(
        default_factory=AttributionPrompts,
        description="the number-priming prompt of the direct logit attribution",
    )
    attention: AttentionSettings = Field(
        default_factory=AttentionSettings, description="the attention prompts and plotted heads"
    )
    layers: list[int] | None = Field(
        default=None,
        description="blocks searched for the spike layer; null: 1..L-1 (block 0 only if listed: its "
        "jump is measured from the bare embeddings, see sublens.mechanistic)",
    )
    n_permutations: int = Field(default=10000, ge=100, description="permutations of every permutation test")
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="family-wise alpha of the mechanistic family of tests (Holm); 0.05 only, the level of "
        "the 95% intervals its verdicts read",
    )
    power: float = Field(default=0.8, gt=0.5, lt=1, description='the power the "numbers needed" line is stated at')
    rho_of_interest: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="the smallest |correlation| of interest: equivalence bound and the effect the "
        '"numbers needed" line is sized for (sublens.claims.decide_association)',
    )
    batch_size: int = Field(default=16, ge=1, description="prompts per forward pass")
    device: str = Field(default="auto", description="torch device (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype (auto: by device)")

    @field_validator("alpha")
    @classmethod
    def _alpha_of_the_claims(cls, alpha: float) -> float:
        from sublens.claims.core import checked_alpha  # its verdicts read 95% intervals: 0.05 only

        return checked_alpha(alpha, "alpha")

    @field_validator("numbers", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [v if isinstance(v, dict | NumberEntry) else {"number": v} for v in value]
        return value

    @field_validator("bias", "control")
    @classmethod
    def _word(cls, value: str) -> str:
        if not value.strip() or " " in value.strip():
            raise ValueError(f"{value!r} must be one word (e.g. owl); prompts add its leading space")
        return value.strip()

    @model_validator(mode="after")
    def _one_source(self) -> MechanisticConfig:
        if self.numbers is not None and self.entanglement_run is not None:
            raise ValueError("give either numbers or entanglement_run, not both")
        if self.numbers is not None:
            if not self.numbers:
                raise ValueError("numbers is empty: list at least one number, or leave it out")
            seen = [e.number for e in self.numbers]
            if len(set(seen)) != len(seen):
                raise ValueError("numbers lists a number twice")
        if self.entanglement_set is not None and self.entanglement_run is None:
            raise ValueError("entanglement_set needs entanglement_run")
        if self.bias == self.control:
            raise ValueError("bias and control must be different words")
        return self
