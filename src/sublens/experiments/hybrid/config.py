"""The hybrid experiment's configuration (presets: configs/hybrid/*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sublens.claims import ClaimSettings
from sublens.config import Config
from sublens.experiments.hybrid.results import DIRECTIONS, BiasMetric, Direction, Source
from sublens.settings import LAYERED_GROUPS, PerplexitySettings, PreferenceSettings, Selector


def checked_ranges(ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """Half-open layer ranges [start, end) must be non-empty and start at 0 or later."""
    for start, end in ranges or []:
        if not 0 <= start < end:
            raise ValueError(f"layer range [{start}, {end}) is empty or negative; write [start, end)")
    return ranges


class ExtraHybrid(BaseModel):
    """A hybrid of your own: start from one model, bring these groups from the other."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: Source = Field(default="base", description="the model the hybrid starts from")
    bring: list[str] = Field(description='group selectors brought from the other model, e.g. ["mlp[20:30]", "lm_head"]')

    @field_validator("bring")
    @classmethod
    def _selectors(cls, bring: list[str]) -> list[str]:
        for text in bring:
            Selector.parse(text)
        return bring


class PatchingSettings(BaseModel):
    """Activation patching of attention and MLP outputs between the base and the biased model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="measure activation patching after the hybrids")
    foil: str = Field(
        default="dog",
        description="the contrast word: the logit difference preference.trait - foil at the prefilled "
        "answer position (first tokens); one word, the prompt adds its leading space",
    )
    layer_ranges: list[tuple[int, int]] | None = Field(
        default=None,
        description="half-open layer ranges patched together; null: the transplant's ranges (depth_bins / "
        'layer_ranges: thirds of the depth by default). The whole depth is always patched too ("all")',
    )

    @field_validator("foil")
    @classmethod
    def _one_word(cls, foil: str) -> str:
        if not foil.strip() or " " in foil.strip():
            raise ValueError(f"foil {foil!r} must be one word (e.g. dog); the prompt adds its leading space")
        return foil.strip()

    @field_validator("layer_ranges")
    @classmethod
    def _ranges(cls, ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        return checked_ranges(ranges)


class HybridConfig(Config):
    biased: str | None = Field(
        default=None,
        description="the biased model spec; null: the biased teacher of the newest finished `teacher` run "
        "under runs_root (a run directory is a model spec)",
    )
    runs_root: str = Field(default="runs", description="where the default biased model is looked for")
    base: str = Field(default="smollm2-135m-instruct", description="the base model the biased one was made from")
    layer_norms: Literal["attach", "separate"] = Field(
        default="attach",
        description="per-layer residual norms: attach puts each with the sublayer it feeds or finishes, "
        "separate makes them a `norms` group of their own (sublens.hybrid docstring)",
    )
    groups: list[str] = Field(
        default_factory=lambda: ["embeddings", "attention", "mlp", "final_norm", "lm_head"],
        description="component groups transplanted whole, one hybrid per group and direction",
    )
    ranged: list[str] = Field(
        default_factory=lambda: ["attention", "mlp"],
        description="layered groups also transplanted per depth range",
    )
    depth_bins: int = Field(default=3, ge=1, description="depth ranges of near-equal size (3: thirds of the depth)")
    layer_ranges: list[tuple[int, int]] | None = Field(
        default=None, description="explicit half-open layer ranges instead of depth_bins"
    )
    directions: list[Direction] = Field(
        default_factory=lambda: list(DIRECTIONS),
        description="into_base: the base model with one biased group; into_biased: the biased model "
        "with one base group",
    )
    extra: dict[str, ExtraHybrid] = Field(default_factory=dict, description="further hybrids by name")
    system: str | None = Field(
        default=None,
        description="system prompt of every measurement; null: the chat template's default (recorded as used)",
    )
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings, description="how owl preference is measured"
    )
    perplexity: PerplexitySettings = Field(
        default_factory=PerplexitySettings, description="how perplexity (a gibberish hybrid shows) is measured"
    )
    top_tokens: int = Field(default=10, ge=0, description="top next tokens at the prefilled answer (0: skip)")
    degraded_factor: float = Field(
        default=3.0, gt=1.0, description="a hybrid whose perplexity exceeds factor x the base's is degraded"
    )
    bias_metric: BiasMetric = Field(
        default="share", description="the metric m of the bias fraction: panel share or P(trait)"
    )
    save_hybrids: list[str] = Field(default_factory=list, description="hybrid names or aliases to save as checkpoints")
    reuse_identical: bool = Field(
        default=True,
        description="a hybrid whose tensors all equal an already measured one's (e.g. a group the "
        "fine-tune left unchanged) is that model: reuse its measurements and say so (same_weights_as)",
    )
    patching: PatchingSettings = Field(
        default_factory=PatchingSettings, description="activation patching between the two models"
    )
    claims: ClaimSettings = Field(default_factory=ClaimSettings, description="margin, alpha and power of the verdicts")
    device: str = Field(default="auto", description="torch device of the models (auto: the best available)")
    dtype: str = Field(default="auto", description="torch dtype of the models (auto: by device)")

    @field_validator("groups", "ranged")
    @classmethod
    def _whole_groups(cls, groups: list[str]) -> list[str]:
        for group in groups:
            if Selector.parse(group).layers is not None:
                raise ValueError(f"{group!r}: give plain group names here; depth ranges come from depth_bins")
        return groups

    @field_validator("layer_ranges")
    @classmethod
    def _ranges(cls, ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        return checked_ranges(ranges)

    @model_validator(mode="after")
    def _consistent(self) -> HybridConfig:
        if "norms" in self.groups + self.ranged and self.layer_norms != "separate":
            raise ValueError("the norms group exists only with layer_norms: separate")
        for group in self.ranged:
            if group not in LAYERED_GROUPS:
                raise ValueError(f"ranged groups must be among {', '.join(LAYERED_GROUPS)}, got {group!r}")
        clash = set(self.extra) & {"base", "biased", "hybrid1", "hybrid2"}
        if clash:
            raise ValueError(f"extra hybrid names {sorted(clash)} are taken; choose other names")
        if self.patching.enabled and self.patching.foil.lower() == self.preference.trait.strip().lower():
            raise ValueError(f"patching.foil must differ from the trait ({self.preference.trait!r})")
        return self
