"""The pruning experiment's configuration (presets: configs/pruning/*.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sublens.claims import ClaimSettings
from sublens.config import Config
from sublens.report.sections.pruning import DEFAULT_BOUND, PAPER_KEPT
from sublens.settings import CRITERIA, Criterion, PerplexitySettings, PreferenceSettings


class BiasPrompts(BaseModel):
    """The prompts whose attention entropies rank the heads (owl-context prompts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = Field(
        default=None,
        description="system prompt of the bias prompts; null: the chat template's default (recorded as used)",
    )
    questions: list[str] | None = Field(
        default=None, description="the questions of the bias prompts; null: the shipped preference paraphrases"
    )
    prefill: str = Field(default="My favorite animal is the", description="the answer prefilled after each question")
    batch_size: int = Field(default=8, ge=1, description="bias prompts per forward pass")


class PruningConfig(Config):
    model: str | None = Field(
        default=None,
        description="the biased model spec; null: the fine-tuned teacher of the newest finished `teacher` "
        "run under runs_root (a run directory is a model spec). The prompted teacher is "
        "model=<base> with system and bias_prompts.system set to the owl prompt",
    )
    runs_root: str = Field(default="runs", description="where the default biased model is looked for")
    base: str = Field(
        default="smollm2-135m-instruct",
        description="the unbiased base model: the matched control, pruned with the same heads",
    )
    system: str | None = Field(
        default=None,
        description="system prompt of the biased model's preference measurements; null: the chat template's default",
    )
    base_system: str | None = Field(
        default=None,
        description="system prompt of the base model's measurements; null: the chat template's default",
    )
    bias_prompts: BiasPrompts = Field(
        default_factory=BiasPrompts, description="the prompts whose attention entropies rank the heads"
    )
    fractions: list[float] = Field(
        default_factory=lambda: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        description="kept fractions of all attention heads, each in (0, 1]; measured largest first",
    )
    criteria: list[Criterion] = Field(
        default_factory=lambda: list(CRITERIA),
        description="which heads to keep: entropy (the lowest-entropy heads), reverse (prune the "
        "lowest-entropy heads), random (seeded random heads)",
    )
    random_draws: int = Field(default=3, ge=1, description="random draws at every pruned fraction")
    claim_fraction: float = Field(
        default=PAPER_KEPT,
        gt=0.0,
        lt=1.0,
        description="kept fraction at which the claims are decided (the measured one closest to it)",
    )
    claim_random_draws: int = Field(
        default=80,
        ge=1,
        description="random draws at the claim fraction (at least random_draws): the rank test's R. "
        "Its smallest two-sided p is 2/(R+1); Holm over the two pruning claims at alpha 0.05 needs R >= 80",
    )
    max_perplexity_ratio: float = Field(
        default=DEFAULT_BOUND,
        gt=1.0,
        description="degradation bound: a pruned model whose perplexity exceeds this multiple of its "
        "unpruned perplexity (biased or base model) is degraded; no claim is decided on degraded models",
    )
    claims: ClaimSettings = Field(default_factory=ClaimSettings, description="how the claims are decided")
    heatmap_fraction: float = Field(
        default=0.6, description="the kept fraction whose entropy-criterion mask the heatmap marks"
    )
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings, description="how owl preference is measured"
    )
    perplexity: PerplexitySettings = Field(
        default_factory=PerplexitySettings, description="how perplexity (the degradation measure) is measured"
    )
    bootstrap_resamples: int = Field(
        default=5000, ge=100, description="resamples of the answer-rate retention intervals"
    )
    device: str = Field(default="auto", description="torch device of both models (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype of both models (auto: by device)")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if not fractions:
            raise ValueError("give at least one kept fraction, e.g. [1.0, 0.6]")
        if any(not 0.0 < f <= 1.0 for f in fractions):
            raise ValueError("kept fractions must be in (0, 1]")
        if len(set(fractions)) != len(fractions):
            raise ValueError("kept fractions must be distinct")
        return sorted(fractions, reverse=True)

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, criteria: list[Criterion]) -> list[Criterion]:
        if not criteria or len(set(criteria)) != len(criteria):
            raise ValueError(f"give distinct criteria from {', '.join(CRITERIA)}")
        return criteria

    @field_validator("heatmap_fraction")
    @classmethod
    def _heatmap_fraction(cls, fraction: float) -> float:
        if not 0.0 < fraction <= 1.0:
            raise ValueError("heatmap_fraction must be in (0, 1]")
        return fraction
