"""Transplanting weights between the base and the biased model: both models' weights are held
in memory (`weights_snapshot`), a `HybridSpec` says which model a hybrid starts from and
which groups it brings in from the other, and a `Transplanter` copies the mixture into one
working model, verifies every parameter name by name against its declared source, records
what was swapped (`describe_sources`) and puts the base weights back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sublens.hybrid.groups import ComponentGroups
from sublens.hybrid.sources import SOURCES, HybridError, Source, other
from sublens.hybrid.tying import shared_tensors
from sublens.settings import Selector


# ---- states and transplants ----------------------------------------------------------------
def weights_snapshot(model: nn.Module, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter by name (models must be untied: one tensor per name)."""
    return {
        name: param.detach().to(device or param.device, copy=True)
        for name, param in model.named_parameters(remove_duplicate=False)
    }


@dataclass(frozen=True)
class HybridSpec:
    """A hybrid: start from one model's weights and bring in some groups from the other."""

    name: str
    start: Source
    bring: tuple[Selector, ...] = ()
    description: str = ""
    aliases: tuple[str, ...] = ()
    # Places in the transplant matrix: (direction, group, layers label); several after merging.
    cells: tuple[tuple[str, str, str], ...] = ()

    def sources(self, groups: ComponentGroups) -> dict[str, Source]:
        sources: dict[str, Source] = dict.fromkeys(groups.all_params(), self.start)
        for selector in self.bring:
            for name in groups.params(selector):
                sources[name] = other(self.start)
        return sources

    def from_biased_text(self) -> str:
        labels = ", ".join(s.label for s in self.bring)
        if self.start == "base":
            return labels or "none"
        return f"all but {labels}" if labels else "all"


def _layers_text(layers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> 'L0-2, L5'."""
    spans: list[list[int]] = []
    for layer in sorted(layers):
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(f"L{a}" if a == b else f"L{a}-{b}" for a, b in spans)


def describe_sources(groups: ComponentGroups, sources: Mapping[str, Source]) -> dict[str, str]:
    """Per group, where its weights come from: 'base', 'biased', or 'biased in L0-9, base elsewhere'."""
    out: dict[str, str] = {}
    for group in groups.names:
        names = groups.params(group)
        found = {sources[n] for n in names}
        if len(found) == 1:
            out[group] = next(iter(found))
            continue
        biased_layers = sorted(
            {layer for layer, per in enumerate(groups.layered[group]) if any(sources[n] == "biased" for n in per)}
        )
        out[group] = f"biased in {_layers_text(biased_layers)}, base elsewhere"
    return out


class Transplanter:
    """One working model, two weight states in memory; loads mixtures and checks them.

    The working model must hold the base weights when the transplanter is made (checked); every
    `hybrid()` block leaves it holding them again.
    """

    def __init__(
        self, model: nn.Module, groups: ComponentGroups, states: Mapping[Source, Mapping[str, torch.Tensor]]
    ) -> None:
        self.model = model
        self.groups = groups
        self.states = states
        self.params = dict(model.named_parameters(remove_duplicate=False))
        for source in SOURCES:
            names = set(states[source])
            if names != set(self.params):
                raise HybridError(
                    f"The {source} weights do not match the working model's parameters "
                    f"(missing {sorted(set(self.params) - names)[:3]}, extra {sorted(names - set(self.params))[:3]})."
                )
        self.current: dict[str, Source] = dict.fromkeys(self.params, "base")
        self.verify(self.current)
        self.differs = {n: not torch.equal(states["base"][n], states["biased"][n]) for n in self.params}

    @torch.no_grad()
    def load(self, sources: Mapping[str, Source]) -> int:
        """Copy into the working model every tensor whose source changes; returns how many."""
        changed = 0
        for name, source in sources.items():
            if self.current[name] != source:
                self.params[name].copy_(self.states[source][name])
                self.current[name] = source
                changed += 1
        return changed

    def verify(self, sources: Mapping[str, Source]) -> None:
        """Every parameter equals its declared source's tensor, name by name; tensors not shared."""
        if shared_tensors(self.model):
            raise HybridError(f"Parameters share tensors: {shared_tensors(self.model)}.")
        wrong = [n for n, p in self.params.items() if not torch.equal(p, self.states[sources[n]][n])]
        if wrong or set(sources) != set(self.params):
            raise HybridError(
                f"Hybrid verification failed: {len(wrong)} tensors differ from their declared source "
                f"(first: {wrong[:3]}). This is a bug in sublens; please report it."
            )

    def effective_from_biased(self, sources: Mapping[str, Source]) -> frozenset[str]:
        """The tensors of a mixture that come from biased *and* differ from base: two mixtures
        with the same set hold identical weights, name by name."""
        return frozenset(n for n, s in sources.items() if s == "biased" and self.differs[n])

    def record(self, spec: HybridSpec, sources: Mapping[str, Source]) -> dict[str, Any]:
        """What was swapped: per group, counts, and how much of it actually differs."""
        from_biased = [n for n, s in sources.items() if s == "biased"]
        numel = self.groups.numel
        return {
            "start": spec.start,
            "brought_in": [s.label for s in spec.bring],
            "from_other": other(spec.start),
            "groups_from_biased": spec.from_biased_text(),
            "by_group": describe_sources(self.groups, sources),
            "tensors_from_biased": len(from_biased),
            "tensors_from_base": len(sources) - len(from_biased),
            "parameters_from_biased": sum(numel[n] for n in from_biased),
            "parameters_from_biased_differing": sum(numel[n] for n in from_biased if self.differs[n]),
            "verified": "every parameter equals its declared source's tensor (checked name by name)",
        }

    @contextmanager
    def hybrid(self, spec: HybridSpec) -> Iterator[dict[str, Any]]:
        """Load `spec` into the working model, verify it, yield what was swapped; restore base."""
        sources = spec.sources(self.groups)
        try:
            self.load(sources)
            self.verify(sources)
            yield self.record(spec, sources)
        finally:
            self.load(dict.fromkeys(self.params, "base"))
