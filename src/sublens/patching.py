"""Activation patching of attention and MLP outputs between two runs, architecture-generic.

`patch(model, adapter, values)` runs every forward pass inside the block with the named
component outputs replaced by the given tensors. Names follow sublens.hooks (TransformerLens):

  blocks.{l}.hook_attn_out   attention's addition to the residual stream   [batch, pos, d_model]
  blocks.{l}.hook_mlp_out    the MLP's addition to the residual stream     [batch, pos, d_model]

The sites are the adapter's (`attn_out_site`, `mlp_out_site`): for Gemma3 the outputs after its
post-attention / post-feedforward RMSNorms, i.e. exactly what is added to the residual, so
patching every layer's two outputs from run A into run B reproduces A's residual stream (and
logits, when the two models share embeddings, final norm and LM head). The hooks are removed on
exit, also when the body raises.

`patching_sweep` is the hybrid experiment's measurement: for each question, the logit
difference target - foil (owl - dog) at the prefilled answer position in the base and the biased
model, and in each model with one component's outputs over a layer range taken from the other
model's run on the same prompt (biased into base: does it bring the bias? base into biased: does
it remove it?). Weights are switched by the caller (`use(source)`), so one working model serves.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from sublens.arch import Adapter
from sublens.claims import holm
from sublens.errors import SublensError
from sublens.hooks import capture, hook_names
from sublens.stats import t_interval

COMPONENT_HOOKS = {"mlp": "hook_mlp_out", "attention": "hook_attn_out"}
PATCH_DIRECTIONS = ("into_base", "into_biased")  # biased outputs into base / base outputs into biased
_NAME = re.compile(r"^blocks\.(\d+)\.(hook_attn_out|hook_mlp_out)$")


class PatchingError(SublensError):
    """A patch that cannot be applied (unknown name, wrong shape, never reached)."""


def patch_names(component: str, layers: Iterable[int]) -> list[str]:
    """'mlp', range(0, 3) -> ['blocks.0.hook_mlp_out', 'blocks.1.hook_mlp_out', 'blocks.2.hook_mlp_out']."""
    if component not in COMPONENT_HOOKS:
        raise PatchingError(f"Unknown component {component!r}: patch one of {', '.join(COMPONENT_HOOKS)}.")
    return hook_names([COMPONENT_HOOKS[component]], layers)


def _site(adapter: Adapter, name: str) -> nn.Module:
    match = _NAME.match(name)
    if not match:
        raise PatchingError(
            f"Cannot patch {name!r}: patchable activations are blocks.<layer>.hook_attn_out and "
            "blocks.<layer>.hook_mlp_out."
        )
    layer = int(match[1])
    if layer >= adapter.n_layers:
        raise PatchingError(f"{name!r}: layer {layer} does not exist (the model has {adapter.n_layers} layers).")
    return adapter.attn_out_site(layer) if match[2] == "hook_attn_out" else adapter.mlp_out_site(layer)


@contextmanager
def patch(model: nn.Module, adapter: Adapter, values: Mapping[str, torch.Tensor]) -> Iterator[dict[str, int]]:
    """Replace the named outputs by `values` (same shape as the output) in every forward pass
    inside the block; yields name -> how many forward passes were patched. An empty mapping
    patches nothing. `model` is the model the adapter was made for."""
    if adapter.model is not model:
        raise PatchingError("The adapter belongs to another model: make it with adapter_for(model).")
    applied = dict.fromkeys(values, 0)

    def make_hook(name: str, value: torch.Tensor) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            current = output[0] if isinstance(output, tuple) else output
            if current.shape != value.shape:
                raise PatchingError(
                    f"Patch for {name} has shape {list(value.shape)} but the activation is "
                    f"{list(current.shape)}: patch runs of the same prompt (same tokens, batch, positions)."
                )
            replaced = value.to(device=current.device, dtype=current.dtype)
            applied[name] += 1
            return (replaced, *output[1:]) if isinstance(output, tuple) else replaced

        return hook

    sites = {name: _site(adapter, name) for name in values}
    with ExitStack() as stack:
        for name, value in values.items():
            stack.callback(sites[name].register_forward_hook(make_hook(name, value)).remove)
        yield applied


def logit_difference(logits: torch.Tensor, target: int, foil: int) -> float:
    """logit[target] - logit[foil] at the last position of a [1, pos, vocab] (or [1, 1, vocab]) output:
    the log odds of target over foil (the softmax normaliser cancels)."""
    last = logits[0, -1].double()
    return float(last[target] - last[foil])


def _run(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits: torch.Tensor = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
    return logits


def layer_label(layers: tuple[int, int], n_layers: int) -> str:
    """(0, 10) -> 'L0-9'; the whole depth -> 'all'."""
    return "all" if tuple(layers) == (0, n_layers) else f"L{layers[0]}-{layers[1] - 1}"


@torch.inference_mode()
def patching_sweep(
    model: nn.Module,
    adapter: Adapter,
    prompts: Sequence[Sequence[int]],
    target: int,
    foil: int,
    ranges: Sequence[tuple[int, int]],
    use: Callable[[str], AbstractContextManager[Any]],
    components: Sequence[str] = ("mlp", "attention"),
    directions: Sequence[str] = PATCH_DIRECTIONS,
) -> dict[str, Any]:
    """Per-question logit differences (target - foil, last position) of the clean base and biased
    runs and of every patched run: ``patched[direction][component][range label]``.

    ``use("base")`` / ``use("biased")`` must make `model` compute that model inside the block. Each
    prompt is run alone (batch 1): no padding, the two models' activations align position by position.
    """
    check_sweep(directions, ranges, adapter.n_layers)
    sweep = _Sweep(model, adapter, prompts, target, foil, ranges, components)
    started = time.perf_counter()
    with use("base"):
        sweep.record_clean("base")
    with use("biased"):
        sweep.record_clean("biased")
        if "into_biased" in directions:
            sweep.run_patched("biased")
    if "into_base" in directions:
        with use("base"):
            sweep.run_patched("base")
    seconds = time.perf_counter() - started
    return {
        "ranges": [list(r) for r in ranges],
        "labels": sweep.labels,
        "components": list(components),
        "directions": list(directions),
        "base": sweep.clean["base"],
        "biased": sweep.clean["biased"],
        "patched": {d: sweep.patched[d] for d in directions},
        "forward_passes": sweep.passes,
        "seconds": seconds,
        "seconds_per_question": seconds / len(prompts) if prompts else None,
    }


def check_sweep(directions: Sequence[str], ranges: Sequence[tuple[int, int]], n_layers: int) -> None:
    for direction in directions:
        if direction not in PATCH_DIRECTIONS:
            raise PatchingError(f"Unknown patching direction {direction!r}: use {', '.join(PATCH_DIRECTIONS)}.")
    for start, end in ranges:
        if not 0 <= start < end <= n_layers:
            raise PatchingError(f"Layer range [{start}, {end}) is not inside the model's {n_layers} layers.")


class _Sweep:
    """The state of one patching sweep: each model's clean activations per question (the donors)
    and the logit differences measured so far."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        prompts: Sequence[Sequence[int]],
        target: int,
        foil: int,
        ranges: Sequence[tuple[int, int]],
        components: Sequence[str],
    ) -> None:
        self.model, self.adapter, self.target, self.foil = model, adapter, target, foil
        self.ranges, self.components = list(ranges), list(components)
        device = next(model.parameters()).device
        self.inputs = [torch.tensor([list(p)], device=device) for p in prompts]
        layers = sorted({layer for start, end in ranges for layer in range(start, end)})
        self.names = [n for c in components for n in patch_names(c, layers)]
        self.labels = [layer_label(r, adapter.n_layers) for r in ranges]
        self.patched: dict[str, dict[str, dict[str, list[float]]]] = {
            d: {c: {label: [] for label in self.labels} for c in components} for d in PATCH_DIRECTIONS
        }
        self.clean: dict[str, list[float]] = {"base": [], "biased": []}
        self.caches: dict[str, list[dict[str, torch.Tensor]]] = {"base": [], "biased": []}
        self.passes = 0

    def record_clean(self, source: str) -> None:
        """Run every question on `source` (the model in use), keeping its logit difference and
        its activations at every patched site."""
        for ids in self.inputs:
            with capture(self.model, self.adapter, self.names) as cache:
                logits = _run(self.model, ids)
            self.clean[source].append(logit_difference(logits, self.target, self.foil))
            self.caches[source].append(dict(cache))
            self.passes += 1

    def run_patched(self, source: str) -> None:
        """Run every question on `source` with one component over one layer range replaced by the
        other model's clean activations, for every component and range."""
        donor = "biased" if source == "base" else "base"
        direction = f"into_{source}"
        for q, ids in enumerate(self.inputs):
            for component in self.components:
                for (start, end), label in zip(self.ranges, self.labels, strict=True):
                    values = {n: self.caches[donor][q][n] for n in patch_names(component, range(start, end))}
                    with patch(self.model, self.adapter, values) as applied:
                        logits = _run(self.model, ids)
                    if any(count != 1 for count in applied.values()):
                        raise PatchingError(f"A patch was applied {applied} times, not once per pass.")
                    self.patched[direction][component][label].append(logit_difference(logits, self.target, self.foil))
                    self.passes += 1


# ---- summaries (no torch) ------------------------------------------------------------------
FRACTION_DEFINITION = (
    "per question q, with G the mean over questions of the gap LD_biased(q) - LD_base(q) in the "
    "logit difference LD = logit(target) - logit(foil): restored (biased outputs into the base run) "
    "= (LD_patched(q) - LD_base(q)) / G; removed (base outputs into the biased run) = "
    "(LD_biased(q) - LD_patched(q)) / G; 0 = no effect, 1 = the whole gap. Mean over questions "
    "with a Student-t 95% CI (the gap G held fixed), t-test of fraction = 0, Holm over every cell"
)
PATCHING_FAMILY = "hybrid.patching"


def _interval(values: np.ndarray) -> dict[str, Any]:
    mean, low, high = t_interval(values.tolist())
    has_ci = bool(np.isfinite(low) and np.isfinite(high))
    p = float(stats.ttest_1samp(values, 0.0).pvalue) if has_ci else None
    return {
        "mean": mean,
        "ci_low": low if has_ci else None,
        "ci_high": high if has_ci else None,
        "p_value": p,
        "n_questions": int(values.size),
    }


def gap_fractions(sweep: Mapping[str, Any], min_gap: float = 1e-6) -> dict[str, Any]:
    """Per (direction, component, range): the fraction of the biased - base logit-difference gap
    restored (into_base) or removed (into_biased), per question and summarised (FRACTION_DEFINITION);
    p-values Holm-adjusted over all cells (family PATCHING_FAMILY). A range's fraction is None when
    the two models do not differ (|mean gap| < min_gap)."""
    base, biased = np.asarray(sweep["base"], dtype=float), np.asarray(sweep["biased"], dtype=float)
    gaps = biased - base
    gap = _interval(gaps)
    gap["per_question"] = gaps.tolist()
    scale = float(gaps.mean()) if gaps.size else float("nan")
    usable = bool(np.isfinite(scale) and abs(scale) >= min_gap)
    cells: list[dict[str, Any]] = []
    for direction, by_component in sweep["patched"].items():
        for component, by_range in by_component.items():
            for (start, end), label in zip(sweep["ranges"], sweep["labels"], strict=True):
                ld = np.asarray(by_range[label], dtype=float)
                cell: dict[str, Any] = {
                    "direction": direction,
                    "component": component,
                    "layers": label,
                    "range": [start, end],
                    "measures": "restored" if direction == "into_base" else "removed",
                }
                if usable and ld.size:
                    per_q = (ld - base) / scale if direction == "into_base" else (biased - ld) / scale
                    summary = _interval(per_q)
                    cell.update(fraction=summary.pop("mean"), **summary, per_question=per_q.tolist())
                else:
                    cell.update(
                        fraction=None,
                        ci_low=None,
                        ci_high=None,
                        p_value=None,
                        n_questions=int(ld.size),
                        per_question=[],
                    )
                cells.append(cell)
    for cell, p in zip(cells, holm([c["p_value"] for c in cells]), strict=True):
        cell["p_holm"] = p
    return {
        "gap": gap,
        "gap_usable": usable,
        "definition": FRACTION_DEFINITION,
        "family": PATCHING_FAMILY,
        "cells": cells,
    }
