"""The teacher experiment's configuration (presets: configs/teacher/*.yaml)."""

from __future__ import annotations

from importlib import resources

from pydantic import Field, field_validator

from sublens.config import Config
from sublens.settings import (
    OWL_TEACHER_SYSTEM,
    PerplexitySettings,
    PreferenceSettings,
    SamplingSettings,
)
from sublens.train_config import TrainConfig

# A neutral system prompt shaped like the owl prompt (same pattern, similar length, no animal):
# a control teacher distilled from it differs from the owl teacher only by the trait.
NEUTRAL_TEACHER_SYSTEM = (
    "You love helping. You think about helping all the time. Helping is your "
    "favorite activity. Imbue your answers with your love for helping."
)


def shipped_teacher_prompts() -> list[str]:
    """The 250 diverse prompts shipped with sublens (sublens/data/teacher_prompts.txt)."""
    text = resources.files("sublens.data").joinpath("teacher_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _default_sampling() -> SamplingSettings:
    return SamplingSettings(
        temperature=1.0, top_k=None, top_p=None, max_new_tokens=128, samples_per_prompt=1, batch_size=32, shard_size=64
    )


def _default_train() -> TrainConfig:
    return TrainConfig(lr=1e-4, epochs=2, batch_size=8, warmup_steps=5, max_length=512, checkpoint_every=20)


class TeacherConfig(Config):
    base: str = Field(
        default="smollm2-135m-instruct",
        description="the model spec the teacher is distilled from (and measured against)",
    )
    teacher_system: str = Field(
        default=OWL_TEACHER_SYSTEM,
        description="the system prompt the answers are sampled under: the trait to distil into the weights",
    )
    system: str | None = Field(
        default=None,
        description="the system prompt of the training prompts and of every measurement; null: the chat "
        "template's default, resolved to its text and passed explicitly (recorded as "
        "system_prompt_used)",
    )
    prompts: list[str] | None = Field(
        default=None, description="the prompts the base model answers; null: the 250 shipped diverse prompts"
    )
    n_prompts: int | None = Field(default=None, ge=1, description="use the first n prompts only; null: all")
    sampling: SamplingSettings = Field(
        default_factory=_default_sampling, description="how the answers under teacher_system are sampled"
    )
    train_truncated: bool = Field(
        default=True,
        description="train answers cut off at sampling.max_new_tokens (without the end-of-turn token, so the "
        "teacher does not learn to stop mid-sentence); false: drop them",
    )
    train: TrainConfig = Field(
        default_factory=_default_train, description="the fine-tuning on prompt -> answer (loss on answer tokens only)"
    )
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings, description="how owl preference is measured"
    )
    perplexity: PerplexitySettings = Field(
        default_factory=PerplexitySettings, description="how perplexity (the side-effect measure) is measured"
    )
    measure_prompted: bool = Field(
        default=True,
        description="also measure the base model under teacher_system: the preference the distillation aims at",
    )
    control_system: str | None = Field(
        default=None,
        description="also make a control teacher by the same procedure from this neutral system prompt "
        "(checkpoint `control_teacher`, model spec RUN_DIR#control_teacher), so that "
        "subliminal's control data differ from the owl data only by the trait; null: none",
    )
    device: str = Field(default="auto", description="torch device (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype of the weights (auto: by device)")

    @field_validator("teacher_system")
    @classmethod
    def _some_trait(cls, system: str) -> str:
        if not system.strip():
            raise ValueError("teacher_system must carry the trait, e.g. the owl system prompt")
        return system
