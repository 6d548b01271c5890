"""How far the biased weights are from the base: `weight_differences` gives, per component
group and per depth range of each layered group, the relative L2 distance of the biased
weights from the base weights and how many of the group's tensors differ at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from sublens.hybrid.groups import ComponentGroups, range_label
from sublens.settings import Selector


def weight_differences(
    groups: ComponentGroups,
    base: Mapping[str, torch.Tensor],
    biased: Mapping[str, torch.Tensor],
    ranges: Iterable[tuple[int, int]] = (),
) -> dict[str, dict[str, Any]]:
    """How far the biased weights are from the base, per group (and per layer range of each
    layered group): relative L2 distance ||biased - base|| / ||base|| over the group's tensors,
    and how many of its tensors differ at all."""
    squares: dict[str, tuple[float, float]] = {}
    for name in base:
        a, b = base[name].double(), biased[name].double()
        squares[name] = (float((b - a).pow(2).sum()), float(a.pow(2).sum()))

    def relative(names: Iterable[str]) -> float:
        diff = sum(squares[n][0] for n in names)
        norm = sum(squares[n][1] for n in names)
        return (diff / norm) ** 0.5 if norm > 0 else float("nan")

    out: dict[str, dict[str, Any]] = {}
    for group in groups.names:
        names = groups.params(group)
        rel = {"all": relative(names)}
        if group in groups.layered:
            for r in ranges:
                rel[range_label(r)] = relative(groups.params(Selector(group, r)))
        out[group] = {
            "relative_l2": rel,
            "tensors": len(names),
            "tensors_differing": sum(squares[n][0] > 0 for n in names),
        }
    return out
