"""The pruning figures, drawn from the results alone (a run directory can be redrawn), in the
paper style of `sublens.figures`: retention and perplexity against the kept fraction, and the
head-entropy heatmap with the pruned heads marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from sublens.experiments.pruning.results import PruningResults, Step
from sublens.figures import PAPER_RC, save_figure
from sublens.pruning import CRITERIA

COLORS = {"entropy": "tab:blue", "reverse": "tab:red", "random": "tab:gray"}
Panel = Literal["p_trait", "panel_share", "answer_rate", "perplexity"]


def make_figures(results: PruningResults, out: Path) -> list[str]:
    """Writes pruning_retention and pruning_entropy_heatmap (.pdf, .png) into `out`; their names."""
    written: list[Path] = []
    with plt.rc_context(PAPER_RC):
        written += save_figure(sweep_figure(results), out / "pruning_retention")
        written += save_figure(heatmap_figure(results), out / "pruning_entropy_heatmap")
    return [path.name for path in written]


def _series(steps: Sequence[Step], panel: Panel) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, value, CI low, CI high of one panel (an unbounded upper bound is inf); base-controlled
    retention where the cell has it, else the biased model's own."""
    x, y, low, high = [], [], [], []
    for s in steps:
        if panel == "perplexity":
            value = s.perplexity.mean if s.perplexity else None
            lo = hi = value
        else:
            source = s.controlled or s.retention
            r = getattr(source, panel)
            value, lo, hi = (r.ratio, r.ci_low, r.ci_high) if r is not None else (None, None, None)
        if value is None:
            continue
        x.append(s.fraction)
        y.append(value)
        low.append(value if lo is None else lo)
        high.append(math.inf if hi is None else hi)
    return x, y, low, high


def sweep_figure(results: PruningResults) -> Figure:
    """Four panels vs kept fraction: P(trait), panel share and answer-rate retention (95% CI
    bands), perplexity. Retention of P and share on a log scale; the answer rate (often 0) linear,
    an unbounded CI drawn to the top of the panel."""
    trait = results.trait
    kind = " (base-controlled)" if any(s.controlled for s in results.steps) else ""
    panels: list[tuple[Panel, str]] = [
        ("p_trait", f"P({trait}) retention{kind}"),
        ("panel_share", f"panel-share retention{kind}"),
        ("answer_rate", f"answer-rate retention{kind}"),
        ("perplexity", "perplexity (biased model)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.0))
    for ax, (name, label) in zip(axes, panels, strict=True):
        series = {}
        for criterion in CRITERIA:
            x, y, low, high = _series([s for s in results.steps if s.criterion == criterion], name)
            if x:
                series[criterion] = (x, y, low, high)
        finite = [v for _, y, _, h in series.values() for v in (*y, *h) if math.isfinite(v)]
        cap = max([2.0, *finite]) * 1.1 if name == "answer_rate" else math.inf
        for criterion, (x, y, low, high) in series.items():
            ax.plot(x, y, marker="o", ms=3, color=COLORS[criterion], label=criterion)
            if name != "perplexity":
                ax.fill_between(x, low, [min(h, cap) for h in high], color=COLORS[criterion], alpha=0.15, lw=0)
        if not series:
            sampled = results.unpruned.preference.sampled is not None
            why = ("undefined\n(unpruned model never\nnamed the trait)" if sampled and name == "answer_rate"
                   else "not measured")
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4")
        unpruned_ppl = results.unpruned.perplexity
        if name == "perplexity" and unpruned_ppl:
            ax.axhline(unpruned_ppl.perplexity, color="k", lw=0.6, ls=":")
            bound = results.degradation_bound
            if bound:
                ax.axhline(unpruned_ppl.perplexity * bound, color="tab:red", lw=0.6, ls="--",
                           label=f"×{bound:g} bound")
        elif name != "perplexity":
            ax.axhline(1.0, color="k", lw=0.6, ls=":")
        if name == "answer_rate":
            ax.set_ylim(0, cap if series else 2.0)
        else:
            ax.set_yscale("log")
        ax.set_xlabel("kept fraction of heads")
        ax.set_title(label)
        ax.invert_xaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels) or 1, frameon=False,
               bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    return fig


def heatmap_figure(results: PruningResults) -> Figure:
    matrix = np.asarray(results.entropy.matrix)  # [layer, head]
    n_layers, n_heads = matrix.shape
    heat = results.entropy.heatmap
    fig, ax = plt.subplots(figsize=(max(3.0, 0.3 * n_heads + 1.5), max(3.0, 0.16 * n_layers + 1.0)))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", origin="upper")
    fig.colorbar(image, ax=ax, label="mean attention entropy (nats)")
    pruned = np.array([[int(p) for p in h[1:].split("H")] for h in heat.pruned]).reshape(-1, 2)
    if pruned.size:
        ax.scatter(pruned[:, 1], pruned[:, 0], marker="x", s=12, color="white", linewidths=0.8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_title(
        f"Head entropy on the bias prompts\n× = pruned at kept fraction {heat.fraction:g} "
        f"({len(heat.pruned)} of {matrix.size} heads)",
        fontsize=8,
    )
    return fig
