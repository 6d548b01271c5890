"""Reading a pruning run's results for the section: the claim settings, the degradation
bound and the claim fraction from its config, the retentions of a step (own and
base-controlled), and how damaged a pruned model is (perplexity over the unpruned model's)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from sublens.claims import ClaimSettings, RatioInterval
from sublens.experiments.pruning.results import ControlledRetention, RatioEstimate, Step

PAPER_KEPT = 0.6  # "survives pruning ~40% of the heads" (config: claim_fraction)
DEFAULT_BOUND = 1.5  # perplexity x unpruned beyond which a pruned model is degraded (max_perplexity_ratio)
FAMILY = "pruning"
SHORT = {"entropy": "ent.", "reverse": "rev.", "random": "rand."}  # column headers
CRITERION_NAMES = {
    "entropy": "entropy, which prunes the highest-entropy heads",
    "reverse": "reverse, which prunes the lowest-entropy heads",
    "random": "random",
}
NO_BASE = (
    "the pruned-base control was not measured (this run predates it), so loss of the bias "
    "is not separated from pruning damage common to any model"
)
NO_BASE_SETTLE = (
    "rerun the pruning stage with the unbiased base model as its control: the same heads "
    "are then removed from it and the retention is base-controlled"
)
Level = Literal["p_trait", "panel_share"]


class Interval(RatioInterval, Protocol):
    """A retention with its interval (own, base-controlled, answer rate) and how it was made."""

    @property
    def ci(self) -> str | None: ...


# ---- reading the results --------------------------------------------------------------------
def _retention(step: Step | None, key: Level = "p_trait") -> RatioEstimate | None:
    """The biased model's own retention (pruned / unpruned), not base-controlled."""
    return getattr(step.retention, key) if step is not None else None


def _controlled(step: Step | None, key: Level = "panel_share") -> ControlledRetention | None:
    """The base-controlled retention; None for a run without the pruned-base control."""
    return getattr(step.controlled, key) if step is not None and step.controlled is not None else None


def _has_ratio(retention: Interval | None) -> bool:
    return retention is not None and retention.ratio is not None


def _step(steps: Sequence[Step], fraction: float, criterion: str) -> Step | None:
    return next((s for s in steps if s.fraction == fraction and s.criterion == criterion), None)


def claim_settings(config: dict[str, Any]) -> ClaimSettings:
    return ClaimSettings(**(config.get("claims") or {}))


def bound_of(config: dict[str, Any]) -> float:
    return float(config.get("max_perplexity_ratio") or DEFAULT_BOUND)


def claim_fraction(steps: Sequence[Step], config: dict[str, Any]) -> float | None:
    """The measured pruned fraction (< 1) closest to the configured one, ties to the larger."""
    target = float(config.get("claim_fraction") or PAPER_KEPT)
    fractions = sorted({s.fraction for s in steps if s.fraction < 1.0}, reverse=True)
    return min(fractions, key=lambda f: abs(f - target)) if fractions else None


def _plain(value: float | None) -> str:
    """A number for the terminal headline: two significant digits."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2g}"


def _pct(fraction: float) -> str:
    return f"{round(100 * fraction)}\\%"


# ---- degradation ----------------------------------------------------------------------------
def damage(step: Step | None) -> float | None:
    """The cell's perplexity over the unpruned model's: the larger of the biased and the base
    model's (means over draws); None when perplexity was not measured."""
    return step.damage() if step is not None else None


def draw_damage(step: Step | None) -> list[float | None]:
    """Per random draw: the larger perplexity ratio of the biased and the base model."""
    biased = (step.perplexity.per_draw_ratio if step and step.perplexity else None) or []
    base_ppl = step.base.perplexity if step and step.base else None
    base = (base_ppl.per_draw_ratio if base_ppl else None) or []
    out: list[float | None] = []
    for i in range(max(len(biased), len(base))):
        values = [v[i] for v in (biased, base) if i < len(v)]
        out.append(max(values) if values else None)
    return out


def inside_bound(step: Step | None, bound: float) -> bool | None:
    d = damage(step)
    return None if d is None else d <= bound


def last_inside(steps: Sequence[Step], criterion: str, bound: float) -> tuple[bool, float | None]:
    """(measured, the smallest kept fraction down to which every pruned fraction of `criterion`
    is inside the bound; None when already the first pruned fraction is outside it)."""
    ordered = sorted((s for s in steps if s.criterion == criterion and s.fraction < 1.0), key=lambda s: -s.fraction)
    if not ordered or any(damage(s) is None for s in ordered):
        return False, None
    last = None
    for s in ordered:  # nested masks: stop at the first fraction outside the bound
        if not inside_bound(s, bound):
            break
        last = s.fraction
    return True, last


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
