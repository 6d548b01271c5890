"""hybrid: the plan: the transplant's depth ranges (`layer_ranges`), every hybrid to measure with
identical weight mixtures merged (`plan_hybrids`), and the results before any hybrid is measured
(`first_results`).
"""

from __future__ import annotations

from sublens.errors import ConfigError
from sublens.experiments.hybrid.config import HybridConfig
from sublens.experiments.hybrid.pair import Pair
from sublens.experiments.hybrid.results import (
    Direction,
    GroupsRecord,
    HybridResults,
    PlanEntry,
    Source,
    WeightChange,
)
from sublens.hybrid import (
    ComponentGroups,
    HybridSpec,
    depth_ranges,
    other,
    range_label,
    weight_differences,
)
from sublens.settings import Selector


# ---- the plan ----------------------------------------------------------------------------------
def layer_ranges(config: HybridConfig, n_layers: int) -> list[tuple[int, int]]:
    """The transplant's half-open depth ranges: layer_ranges, else depth_bins near-equal ones."""
    if config.layer_ranges is None:
        return depth_ranges(n_layers, config.depth_bins)
    for start, end in config.layer_ranges:
        if end > n_layers:
            raise ConfigError(f"layer range [{start}, {end}) goes past the model's {n_layers} layers.")
    return [(int(start), int(end)) for start, end in config.layer_ranges]


def _matrix_spec(direction: Direction, selector: Selector) -> HybridSpec:
    start: Source = "base" if direction == "into_base" else "biased"
    donor = other(start)
    return HybridSpec(
        name=f"{start}+{donor}.{selector.label}",
        start=start,
        bring=(selector,),
        description=f"the {start} model with the {donor} model's {selector.label}",
        cells=((direction, selector.group, range_label(selector.layers)),),
    )


def plan_hybrids(config: HybridConfig, groups: ComponentGroups) -> list[HybridSpec]:
    """Every hybrid to measure, in order, identical weight mixtures merged (names kept as aliases)."""
    head = Selector("lm_head")
    specs = [
        HybridSpec("base", "base", (), "the base model (every tensor from base)"),
        HybridSpec("biased", "biased", (), "the biased model (every tensor from biased)"),
        _with_alias(_matrix_spec("into_biased", head), "hybrid1", "Hybrid 1: biased body + base LM head"),
        _with_alias(_matrix_spec("into_base", head), "hybrid2", "Hybrid 2: base body + biased LM head"),
    ]
    ranges = layer_ranges(config, groups.n_layers)
    for direction in config.directions:
        for group in config.groups:
            specs.append(_matrix_spec(direction, Selector(group)))
        for group in config.ranged:
            for layers in ranges:
                specs.append(_matrix_spec(direction, Selector(group, layers)))
    for name, extra in config.extra.items():
        specs.append(
            HybridSpec(
                name,
                extra.start,
                tuple(Selector.parse(s) for s in extra.bring),
                f"extra: the {extra.start} model with the other's {', '.join(extra.bring)}",
            )
        )
    for spec in specs:
        for selector in spec.bring:
            groups.check(selector)
    merged: dict[frozenset[str], HybridSpec] = {}
    for spec in specs:
        key = frozenset(n for n, s in spec.sources(groups).items() if s == "biased")
        if key in merged:
            first = merged[key]
            aliases = tuple(dict.fromkeys(a for a in (*first.aliases, spec.name, *spec.aliases) if a != first.name))
            merged[key] = HybridSpec(
                first.name,
                first.start,
                first.bring,
                first.description,
                aliases,
                tuple(dict.fromkeys((*first.cells, *spec.cells))),
            )
        else:
            merged[key] = spec
    plan = list(merged.values())
    known = {n for s in plan for n in (s.name, *s.aliases)}
    unknown = [n for n in config.save_hybrids if n not in known]
    if unknown:
        raise ConfigError(f"save_hybrids names unknown hybrids {unknown}; known: {', '.join(sorted(known))}.")
    return plan


def _with_alias(spec: HybridSpec, alias: str, description: str) -> HybridSpec:
    return HybridSpec(spec.name, spec.start, spec.bring, description, (alias,), spec.cells)


def plan_entry(spec: HybridSpec) -> PlanEntry:
    return PlanEntry(
        name=spec.name,
        aliases=list(spec.aliases),
        start=spec.start,
        bring=[s.label for s in spec.bring],
        description=spec.description,
    )


def first_results(
    config: HybridConfig, pair: Pair, groups: ComponentGroups, ranges: list[tuple[int, int]], plan: list[HybridSpec]
) -> HybridResults:
    """The results before any hybrid is measured: the models, their groups, weight change and the plan."""
    change = weight_differences(groups, pair.states["base"], pair.states["biased"], ranges)
    return HybridResults(
        trait=config.preference.trait,
        system=config.system,
        bias_metric=config.bias_metric,
        models=pair.models,
        biased_spec=pair.biased_spec,
        untied=pair.untied,
        groups=GroupsRecord.model_validate(groups.describe()),
        layer_ranges=ranges,
        weight_change={group: WeightChange.model_validate(c) for group, c in change.items()},
        plan=[plan_entry(s) for s in plan],
        hybrids={},
    )
