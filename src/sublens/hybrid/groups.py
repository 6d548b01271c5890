"""Component groups of a model's parameters, found through the adapter: `component_groups`
partitions every parameter name of an untied model into embeddings, attention and mlp per
layer (with their residual norms, or those in a ``norms`` group of their own), final_norm
and lm_head, and checks that the partition is exact; `ComponentGroups` answers which names
a `Selector` (a group, optionally a half-open layer range) stands for. `depth_ranges` and
`range_label` split and name the depth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.errors import ArchitectureError, ConfigError
from sublens.hybrid.norms import _residual_norm_sides
from sublens.hybrid.sources import HybridError
from sublens.hybrid.tying import shared_tensors
from sublens.settings import GROUP_ORDER, Selector

WHOLE_GROUPS = ("embeddings", "final_norm", "lm_head")
LayerNorms = Literal["attach", "separate"]


# ---- groups --------------------------------------------------------------------------------


def range_label(layers: tuple[int, int] | None) -> str:
    """(0, 10) -> 'L0-9'; None -> 'all'."""
    return "all" if layers is None else f"L{layers[0]}-{layers[1] - 1}"


def depth_ranges(n_layers: int, bins: int) -> list[tuple[int, int]]:
    """Split the depth into `bins` contiguous half-open ranges of near-equal size (thirds...)."""
    if not 1 <= bins <= n_layers:
        raise ConfigError(f"depth_bins must be between 1 and the number of layers ({n_layers}), got {bins}.")
    edges = [round(i * n_layers / bins) for i in range(bins + 1)]
    return [(edges[i], edges[i + 1]) for i in range(bins)]


@dataclass(frozen=True)
class ComponentGroups:
    """A partition of a model's parameter names into component groups (see the `sublens.hybrid` docstring)."""

    n_layers: int
    layer_norms: LayerNorms
    whole: dict[str, tuple[str, ...]]  # embeddings / final_norm / lm_head -> parameter names
    layered: dict[str, tuple[tuple[str, ...], ...]]  # attention / mlp (/ norms) -> per layer
    numel: dict[str, int]  # parameter name -> number of elements
    norm_side: dict[str, str] = field(default_factory=dict)  # residual norm -> attention | mlp

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g for g in GROUP_ORDER if g in self.whole or g in self.layered)

    def check(self, selector: Selector) -> None:
        if selector.group not in self.names:
            hint = " (set layer_norms: separate to get a norms group)" if selector.group == "norms" else ""
            raise ConfigError(f"No group {selector.group!r} here{hint}; groups: {', '.join(self.names)}.")
        if selector.layers is not None and selector.layers[1] > self.n_layers:
            raise ConfigError(
                f"Layer range {selector.label} goes past the model's {self.n_layers} layers "
                f"(valid layers are 0..{self.n_layers - 1}; ranges are half-open [start:end))."
            )

    def params(self, selector: Selector | str) -> tuple[str, ...]:
        sel = Selector.parse(selector) if isinstance(selector, str) else selector
        self.check(sel)
        if sel.group in self.whole:
            return self.whole[sel.group]
        start, end = sel.layers or (0, self.n_layers)
        return tuple(name for layer in range(start, end) for name in self.layered[sel.group][layer])

    def all_params(self) -> list[str]:
        return [name for group in self.names for name in self.params(group)]

    def group_of(self, name: str) -> tuple[str, int | None]:
        """(group, layer or None) of one parameter name."""
        for group, names in self.whole.items():
            if name in names:
                return group, None
        for group, per_layer in self.layered.items():
            for layer, names in enumerate(per_layer):
                if name in names:
                    return group, layer
        raise KeyError(name)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group in self.names:
            names = self.params(group)
            out[group] = {
                "tensors": len(names),
                "parameters": sum(self.numel[n] for n in names),
                "layered": group in self.layered,
                "example_names": list(names[:4] if group not in self.layered else self.layered[group][0]),
            }
        return {
            "layer_norms": self.layer_norms,
            "norm_placement": self.norm_placement(),
            "groups": out,
        }

    def norm_placement(self) -> dict[str, str]:
        """Layer 0's residual norms -> the sublayer they were put with (attention | mlp)."""
        sides: dict[str, str] = {}
        for name, side in self.norm_side.items():
            if self.group_of(name)[1] == 0:
                sides[name] = side
        return sides


def _module_params(adapter: Adapter, module: nn.Module | None) -> list[tuple[str, nn.Parameter]]:
    if module is None:
        return []
    prefix = adapter.module_name(module)
    return [(f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters(remove_duplicate=False)]


def component_groups(
    model: nn.Module, adapter: Adapter | None = None, layer_norms: LayerNorms = "attach"
) -> ComponentGroups:
    """Partition every parameter of an (untied) model into component groups; refuse otherwise."""
    adapter = adapter or adapter_for(model)
    if layer_norms not in ("attach", "separate"):
        raise ConfigError(f"layer_norms must be 'attach' or 'separate', got {layer_norms!r}.")
    shared = shared_tensors(model)
    if shared:
        raise HybridError(
            f"Parameters {shared} share one tensor, so they cannot come from different models. "
            "Untie them first (sublens.hybrid.untie_embeddings)."
        )
    everything = dict(model.named_parameters(remove_duplicate=False))
    embed = _module_params(adapter, adapter.embed()) + _module_params(adapter, adapter.pos_embed())
    whole = {
        "embeddings": tuple(n for n, _ in embed),
        "final_norm": tuple(n for n, _ in _module_params(adapter, adapter.norm_final())),
        "lm_head": tuple(n for n, _ in _module_params(adapter, adapter.lm_head())),
    }
    sides = _residual_norm_sides(model, adapter)
    layered: dict[str, list[tuple[str, ...]]] = {"attention": [], "mlp": []}
    if layer_norms == "separate":
        layered["norms"] = []
    norm_side: dict[str, str] = {}
    modules = dict(model.named_modules())
    for layer in range(adapter.n_layers):
        parts: dict[str, list[str]] = {
            "attention": [n for n, _ in _module_params(adapter, adapter.attn(layer))],
            "mlp": [n for n, _ in _module_params(adapter, adapter.mlp(layer))],
            "norms": [],
        }
        for module_name, side in sides[layer].items():
            for pname, _ in modules[module_name].named_parameters(recurse=False):
                name = f"{module_name}.{pname}"
                norm_side[name] = side
                parts["norms" if layer_norms == "separate" else side].append(name)
        for group in layered:
            layered[group].append(tuple(parts[group]))
    groups = ComponentGroups(
        n_layers=adapter.n_layers,
        layer_norms=layer_norms,
        whole=whole,
        layered={g: tuple(v) for g, v in layered.items()},
        numel={n: p.numel() for n, p in everything.items()},
        norm_side=norm_side,
    )
    _check_partition(groups, everything)
    return groups


def _check_partition(groups: ComponentGroups, everything: Mapping[str, nn.Parameter]) -> None:
    assigned = groups.all_params()
    twice = sorted(n for n, count in Counter(assigned).items() if count > 1)
    missing = sorted(set(everything) - set(assigned))
    unknown = sorted(set(assigned) - set(everything))
    if twice or missing or unknown:
        raise ArchitectureError(
            "The component groups do not partition the model's parameters "
            f"(in two groups: {twice[:5]}, in none: {missing[:5]}, not parameters: {unknown[:5]}). "
            "The adapter for this family needs to expose these components."
        )
