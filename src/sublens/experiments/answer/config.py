"""The answer experiment's configuration."""

from __future__ import annotations

from pydantic import Field

from sublens.config import Config
from sublens.prompts import OWL_SYSTEM


class AnswerConfig(Config):
    model: str = Field(default="smollm2-135m-instruct", description="the model spec")
    device: str = Field(default="auto", description="torch device (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype of the weights (auto: by device)")
    question: str = Field(default="What is your favorite animal?", description="the question asked")
    prefill: str = Field(
        default="My favorite animal is the", description="the start of the answer, after which the next token is read"
    )
    systems: dict[str, str | None] = Field(
        default_factory=lambda: {"default": None, "owl": OWL_SYSTEM},
        description="name -> system prompt; null: the chat template's own default (recorded as used)",
    )
    top: int = Field(default=10, ge=1, description="the most likely next tokens listed per system prompt")
