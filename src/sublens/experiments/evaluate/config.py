"""The evaluate experiment's configuration (presets: configs/evaluate/*.yaml)."""

from __future__ import annotations

from pydantic import Field, field_validator

from sublens.config import Config
from sublens.settings import PerplexitySettings, PreferenceSettings


def _default_systems() -> dict[str, str | None]:
    return {"default": None}


class EvaluateConfig(Config):
    models: list[str] = Field(
        default_factory=lambda: ["smollm2-135m-instruct"],
        description="the model specs to measure, each under every system prompt",
    )
    systems: dict[str, str | None] = Field(
        default_factory=_default_systems,
        description="name -> system prompt; null: the chat template's own default (recorded as used). The first "
        "is the reference every other condition is compared with",
    )
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings, description="how owl preference is measured"
    )
    perplexity: PerplexitySettings = Field(
        default_factory=PerplexitySettings, description="how perplexity is measured (once per model: no system prompt)"
    )
    device: str = Field(default="auto", description="torch device (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype of the weights (auto: by device)")

    @field_validator("models")
    @classmethod
    def _some_models(cls, models: list[str]) -> list[str]:
        if not models:
            raise ValueError("give at least one model spec")
        return models

    @field_validator("systems")
    @classmethod
    def _some_systems(cls, systems: dict[str, str | None]) -> dict[str, str | None]:
        if not systems:
            raise ValueError("give at least one system prompt (null for the template default)")
        return systems

    def label(self, spec: str, system: str) -> str:
        """A condition's name: the system prompt's, prefixed by the model spec when there is more
        than one model."""
        return system if len(self.models) == 1 else f"{spec} | {system}"

    def reference(self) -> str:
        """The first condition, which every other one is compared with."""
        return self.label(self.models[0], next(iter(self.systems)))
