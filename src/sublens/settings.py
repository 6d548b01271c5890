"""The settings every experiment config is made of, torch-free: reading a config, checking it
and showing its keys (`sublens config`) import no model code. Each setting's module uses it
from here (sublens.preference, sublens.perplexity, sublens.subliminal, sublens.pruning,
sublens.shd, sublens.distill, sublens.hybrid) and re-exports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sublens.errors import ConfigError

# ---- preference and perplexity (sublens.preference, sublens.perplexity) -------------------------
DEFAULT_PANEL = ("dog", "cat", "eagle", "lion", "wolf", "dolphin", "elephant", "tiger", "horse", "bear")


class PreferenceSettings(BaseModel):
    """What is asked and how answers are sampled: every setting explicit, none left to a library."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trait: str = Field(default="owl", description="the animal whose preference is measured")
    panel: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PANEL),
        description="the other animals of the panel (trait excluded); the trait's share is its "
        "probability over the panel's total",
    )
    prefill: str = Field(
        default="My favorite animal is the",
        description="assistant text after each question, before the animal's name is scored",
    )
    questions: list[str] | None = Field(
        default=None, description="questions whose answers are scored; null: the 25 shipped paraphrases"
    )
    sample_questions: list[str] | None = Field(
        default=None,
        description="one-word questions for sampled answers; null: the 50 shipped ones",
    )
    samples_per_question: int = Field(
        default=4, ge=0, description="sampled answers per sample question; 0 skips sampling"
    )
    # At temperature 1 SmolLM2-135M almost never answers a one-word question on task without a
    # prefill (measured: answers like "I'm an AI..."); "" suits models that do (the paper
    # setting), so the answer is entirely the model's own.
    sample_prefill: str = Field(
        default="My favorite animal is the",
        description='assistant text before each sampled answer; "" for none',
    )
    temperature: float = Field(default=1.0, description="sampling temperature of the sampled answers")
    top_k: int | None = Field(default=None, description="top-k of the sampled answers; null: off")
    top_p: float | None = Field(default=None, description="nucleus top-p of the sampled answers; null: off")
    max_new_tokens: int = Field(default=8, ge=1, description="longest sampled answer, in tokens")
    batch_size: int = Field(default=32, ge=1, description="prompts scored or sampled together")


class PerplexitySettings(BaseModel):
    """Perplexity on a fixed text corpus: the check that a changed model still models language."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="measure perplexity at all")
    corpus: str = Field(
        default="wikipedia",
        description="'wikipedia' (the shipped sample) or a path to a UTF-8 text file",
    )
    max_tokens: int = Field(default=4096, ge=16, description="corpus tokens scored (the first ones)")
    window: int = Field(default=512, ge=2, description="tokens per non-overlapping scored window")
    batch_size: int = Field(default=4, ge=1, description="windows scored together")


# ---- sampling (sublens.subliminal, sublens.scoring) ---------------------------------------------
# Recorded with every sample set; changed whenever scoring/sampling changes how a sample is drawn.
SAMPLER = "shared-prefix KV, padded batches, per-row inverse-CDF draws (v3)"  # recorded with every sample set
OWL_TEACHER_SYSTEM = (
    "You love owls. You think about owls all the time. Owls are your favorite animal. "
    "Imbue your answers with your love for the animal."
)


class SamplingSettings(BaseModel):
    """How answers are sampled: every setting explicit, none left to a library default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=1.0, ge=0, description="sampling temperature; 0: greedy")
    top_k: int | None = Field(default=None, ge=1, description="sample among the k most likely tokens only; null: off")
    top_p: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="sample among the fewest most likely tokens whose probability reaches top_p; null: off",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, description="most tokens per answer; an answer stopped there is marked truncated"
    )
    samples_per_prompt: int = Field(default=1, ge=1, description="answers sampled per prompt")
    batch_size: int = Field(default=32, ge=1, description="rows decoded together (a sample does not depend on it)")
    # Prompts are left-padded to their length rounded up past a multiple of this; prompts in
    # one band decode together. A sample depends on it (through rounding), so it is recorded.
    pad_multiple: int = Field(
        default=32,
        ge=1,
        description="prompts are left-padded to their length rounded up "
        "past a multiple of this; recorded: samples depend on it",
    )
    shard_size: int = Field(
        default=128, ge=1, description="prompts per shard file; a resumed run samples only the missing shards"
    )

    def provenance(self) -> dict[str, Any]:
        """The settings that determine a sample (batch size does not)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "pad_multiple": self.pad_multiple,
            "sampler": SAMPLER,
        }


# ---- head pruning, SHD, distillation (sublens.pruning, sublens.shd, sublens.distill) ------------
Criterion = Literal["entropy", "reverse", "random"]
CRITERIA: tuple[Criterion, ...] = ("entropy", "reverse", "random")
KlDirection = Literal["student_teacher", "teacher_student"]
KL_DIRECTIONS: tuple[KlDirection, ...] = ("student_teacher", "teacher_student")
DEFAULT_KL_DIRECTION: KlDirection = "student_teacher"  # KL(student ‖ squeezed teacher), as in the SHD paper
# What runs recorded before `shd.kl_direction` existed used (their results lack the key).
LEGACY_KL_DIRECTION: KlDirection = "teacher_student"
TeacherFormat = Literal["plain", "chat"]


@dataclass(frozen=True)
class TeacherView:
    """How the teacher reads a text: ``plain`` (``system`` = an optional context paragraph
    before the text; None = none) or ``chat`` (``system`` = the system turn; None = whatever
    the chat template does by default, "" = an explicitly empty system turn)."""

    format: TeacherFormat = "plain"
    system: str | None = None


# ---- component groups (sublens.hybrid) -----------------------------------------------------------
LAYERED_GROUPS = ("attention", "mlp", "norms")
GROUP_ORDER = ("embeddings", "attention", "mlp", "norms", "final_norm", "lm_head")
_SELECTOR = re.compile(r"^\s*([a-z_]+)\s*(?:\[\s*(\d+)\s*:\s*(\d+)\s*\])?\s*$")


@dataclass(frozen=True)
class Selector:
    """A group, optionally restricted to layers [start, end) (only attention / mlp / norms)."""

    group: str
    layers: tuple[int, int] | None = None

    @classmethod
    def parse(cls, text: str) -> Selector:
        """'mlp', 'attention[0:10]' (layers 0..9), 'lm_head'."""
        match = _SELECTOR.match(text)
        if not match or match[1] not in GROUP_ORDER:
            raise ConfigError(
                f"Bad component group {text!r}: write one of {', '.join(GROUP_ORDER)}, optionally "
                "with a half-open layer range for attention/mlp/norms, e.g. mlp[0:10]."
            )
        layers = None if match[2] is None else (int(match[2]), int(match[3]))
        if layers is not None:
            if match[1] not in LAYERED_GROUPS:
                raise ConfigError(f"{match[1]} has no layers: {text!r} cannot take a layer range.")
            if layers[0] >= layers[1]:
                raise ConfigError(f"Empty layer range in {text!r}: write [start:end) with start < end.")
        return cls(match[1], layers)

    @property
    def label(self) -> str:
        return self.group if self.layers is None else f"{self.group}[{self.layers[0]}:{self.layers[1]}]"

    def __str__(self) -> str:
        return self.label
