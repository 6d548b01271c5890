"""Which sublayer each per-layer residual norm belongs to: the norms of layer l are its
parameter-owning submodules outside attn(l) and mlp(l), and one traced forward pass tells
whether each feeds or finishes attention or the MLP (the rule is in the `sublens.hybrid`
docstring). `sublens.hybrid.groups` attaches them to that sublayer's group, or puts them in a
``norms`` group of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sublens.arch import Adapter
from sublens.errors import ArchitectureError


def _layer_norm_candidates(adapter: Adapter, layer: int) -> dict[str, nn.Module]:
    """Layer `layer`'s residual-norm candidates by module name: its submodules that own
    parameters directly and lie outside attn(layer) and mlp(layer)."""
    inside = {id(m) for part in (adapter.attn(layer), adapter.mlp(layer)) for m in part.modules()}
    mods: dict[str, nn.Module] = {}
    for module in adapter.layer(layer).modules():
        if id(module) in inside or not list(module.parameters(recurse=False)):
            continue
        mods[adapter.module_name(module)] = module
    return mods


def _layer_sides(adapter: Adapter, layer: int, names: Iterable[str], calls: list[str]) -> dict[str, str]:
    """'attention' | 'mlp' for each candidate of one layer, from the order of the traced calls
    (`calls`, with "<attn>" and "<mlp>" marking the sublayers). The sublayers' own output sites
    are fixed by the adapter; every other norm belongs to the sublayer it is called before."""
    if "<attn>" not in calls or "<mlp>" not in calls:
        raise ArchitectureError(
            f"Tracing layer {layer} did not call its attention and MLP modules; the adapter's "
            "attn()/mlp() do not match what the model runs."
        )
    attn_at = calls.index("<attn>")
    out_attn = adapter.module_name(adapter.attn_out_site(layer))
    out_mlp = adapter.module_name(adapter.mlp_out_site(layer))
    sides: dict[str, str] = {}
    for name in names:
        if name not in calls:
            raise ArchitectureError(
                f"{name} holds parameters but is not called in a forward pass, so sublens cannot "
                "tell which sublayer it belongs to; use layer_norms: separate."
            )
        if name == out_attn:
            sides[name] = "attention"
        elif name == out_mlp:
            sides[name] = "mlp"
        else:
            sides[name] = "attention" if calls.index(name) < attn_at else "mlp"
    return sides


def _residual_norm_sides(model: nn.Module, adapter: Adapter) -> dict[int, dict[str, str]]:
    """Per layer: residual-norm module name -> 'attention' | 'mlp', by tracing one forward pass.

    The residual norms of layer l are its submodules that own parameters directly and lie
    outside attn(l) and mlp(l). See the `sublens.hybrid` docstring for the rule.
    """
    order: dict[int, list[str]] = {}
    handles = []
    candidates: dict[int, dict[str, nn.Module]] = {}

    def record(layer: int, label: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            order[layer].append(label)

        return hook

    try:
        for layer in range(adapter.n_layers):
            order[layer] = []
            mods = _layer_norm_candidates(adapter, layer)
            candidates[layer] = mods
            for name, module in mods.items():
                handles.append(module.register_forward_pre_hook(record(layer, name)))
            handles.append(adapter.attn(layer).register_forward_pre_hook(record(layer, "<attn>")))
            handles.append(adapter.mlp(layer).register_forward_pre_hook(record(layer, "<mlp>")))
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: _layer_sides(adapter, layer, mods, order[layer]) for layer, mods in candidates.items()}
