"""Reading a hybrid run's results for the section: which ratio the bias fraction is measured
on, and the cells of the transplant matrix (a direction and a possibly ranged component, with
its bias fraction, CI and degradation)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sublens.experiments.hybrid.results import (
    METRIC_KEYS,
    Hybrid,
    HybridResults,
    MetricKey,
    Patching,
    RatioEstimate,
    group_title,
)
from sublens.report.latex import escape

METRIC_NAMES: dict[MetricKey, str] = {"share_ratio": "panel share", "p_trait_ratio": "P({trait})"}


def logit_difference_words(patching: Patching, *, defined: bool = False) -> str:
    """The patching measure in the paper's words. The results file's `metric` is a record (Python
    reprs of the tokens, ' owl' with its quotes the wrong way round in LaTeX), so the prose is
    written here from the tokens. `defined`: the methods have already said which tokens."""
    target, foil = escape(patching.tokens.target[0]), escape(patching.tokens.foil[0])
    short = f"{target}$-${foil} logit difference"
    if defined:
        return short
    return (
        f"{short}: the logit of the first token of ``{target}'' minus that of ``{foil}'' (each word with "
        "its leading space) at the prefilled answer position"
    )


GROUP_ORDER = ("embeddings", "attention", "mlp", "norms", "final_norm", "lm_head")


@dataclass(frozen=True)
class Cell:
    """One place of the transplant matrix: a direction and a (possibly ranged) component."""

    direction: str
    group: str
    layers: tuple[int, int] | None
    name: str  # the hybrid measured there
    fraction: float | None
    low: float | None
    high: float | None
    perplexity: float | None
    degraded: bool

    @property
    def component(self) -> str:
        return self.group if self.layers is None else f"{self.group}[{self.layers[0]}:{self.layers[1]}]"

    @property
    def title(self) -> str:
        """The component as the paper names it: 'MLP, layers 20--29', 'LM head' (plain text)."""
        return component_title(self.group, self.layers)

    @property
    def upper(self) -> float:
        """CI upper bound, else the point value (NaN when unmeasured: every comparison fails)."""
        value = self.high if self.high is not None else self.fraction
        return math.nan if value is None else value

    @property
    def lower(self) -> float:
        value = self.low if self.low is not None else self.fraction
        return math.nan if value is None else value


# ---- reading the results --------------------------------------------------------------------
def metric_key(results: HybridResults | None, config: Mapping[str, Any] | None = None) -> MetricKey:
    """The compare_preference key of the run's bias metric (the configured one without results)."""
    if results is not None:
        return results.metric_key()
    metric = (config or {}).get("bias_metric") or "share"
    return METRIC_KEYS["p_trait"] if metric == "p_trait" else METRIC_KEYS["share"]


def _axis(hybrids: Mapping[str, Hybrid], key: MetricKey) -> RatioEstimate | None:
    """The biased model vs base on the metric: ratio, CI, underpowered."""
    biased = hybrids.get("biased")
    return biased.vs_base.metric(key) if biased is not None and biased.vs_base is not None else None


def _parse_layers(label: str) -> tuple[int, int] | None:
    """'L20-29' -> (20, 30); 'all' -> None."""
    match = re.fullmatch(r"L(\d+)-(\d+)", str(label))
    return (int(match[1]), int(match[2]) + 1) if match else None


def _fraction_ci(h: Hybrid, key: MetricKey, axis: float | None) -> tuple[float | None, float | None]:
    comp = h.vs_base.metric(key) if h.vs_base is not None else None
    low, high = (comp.ci_low, comp.ci_high) if comp is not None else (None, None)
    if axis is None or low is None or high is None or low <= 0 or high <= 0:
        return None, None
    bounds = sorted((math.log(low) / axis, math.log(high) / axis))
    return bounds[0], bounds[1]


def _fraction(h: Hybrid, key: MetricKey) -> float | None:
    metric = next(m for m, k in METRIC_KEYS.items() if k == key)
    value = h.bias_fraction_of(metric)
    return float(value) if math.isfinite(value) else None


def cells(results: HybridResults | None) -> list[Cell]:
    """Every measured matrix cell (a merged hybrid fills each of its cells)."""
    if results is None:
        return []
    hybrids = results.hybrids
    key = results.metric_key()
    axis_estimate = _axis(hybrids, key)
    ratio = axis_estimate.ratio if axis_estimate is not None else None
    axis = math.log(ratio) if ratio and ratio > 0 and abs(math.log(ratio)) > 1e-9 else None
    out = []
    for name, h in hybrids.items():
        low, high = _fraction_ci(h, key, axis)
        for direction, group, layers in h.cells:
            out.append(
                Cell(
                    direction,
                    group,
                    _parse_layers(layers),
                    name,
                    _fraction(h, key),
                    low,
                    high,
                    h.perplexity.perplexity if h.perplexity is not None else None,
                    h.degraded,
                )
            )
    return out


def _cell(all_cells: list[Cell], direction: str, group: str, layers: tuple[int, int] | None = None) -> Cell | None:
    return next((c for c in all_cells if c.direction == direction and c.group == group and c.layers == layers), None)


def _order(component: tuple[str, tuple[int, int] | None]) -> tuple[int, int]:
    group, layers = component
    rank = GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
    return rank, -1 if layers is None else layers[0]


def _layers_words(layers: tuple[int, int]) -> str:
    return f"layers {layers[0]}--{layers[1] - 1}"


def component_title(group: str, layers: tuple[int, int] | None) -> str:
    """'MLP, layers 20--29' for a ranged transplant, the group's name for a whole one."""
    return group_title(group) + (f", {_layers_words(layers)}" if layers is not None else "")
