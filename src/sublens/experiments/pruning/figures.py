"""The pruning figures, drawn from the results alone (a run directory can be redrawn), in the
paper style of `sublens.figures`: retention and perplexity against the kept fraction, and the
head-entropy heatmap with the pruned heads marked.

Each figure is drawn at the width the paper prints it at (the sweep across the page, the heatmap
in a column), so its fonts are the printed sizes. A quantity with nothing to draw (the answer-rate
retention when the unpruned model never named the trait, a measurement switched off) gets no
panel (`sublens.experiments.pruning.panels`, which also says why, for the caption)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sublens.experiments.pruning.panels import Panel, cell_value, drawn_panels
from sublens.experiments.pruning.results import PruningResults, Step
from sublens.figures import DOUBLE_COLUMN_IN, PAPER_RC, SINGLE_COLUMN_IN, save_figure
from sublens.settings import CRITERIA

COLORS = {"entropy": "tab:blue", "reverse": "tab:red", "random": "tab:gray"}
SWEEP_WIDTH_IN = DOUBLE_COLUMN_IN  # the bundle prints it across both columns (figure*)
HEATMAP_WIDTH_IN = SINGLE_COLUMN_IN  # one column
MAX_HEIGHT_IN = 4.3  # the bundle caps a figure at 0.45 of the text height (4.4 in on A4)


def make_figures(results: PruningResults, out: Path) -> list[str]:
    """Writes pruning_retention (when a panel has data) and pruning_entropy_heatmap (.pdf, .png)
    into `out`; their names."""
    written: list[Path] = []
    if drawn_panels(results):
        written += save_figure(sweep_figure(results), out / "pruning_retention")
    written += save_figure(heatmap_figure(results), out / "pruning_entropy_heatmap")
    return [path.name for path in written]


def _series(steps: Sequence[Step], panel: Panel) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, value, CI low, CI high of one panel (an unbounded upper bound is inf)."""
    x, y, low, high = [], [], [], []
    for s in steps:
        value, lo, hi = cell_value(s, panel)
        if value is None:
            continue
        x.append(s.fraction)
        y.append(value)
        low.append(value if lo is None else lo)
        high.append(math.inf if hi is None else hi)
    return x, y, low, high


def sweep_figure(results: PruningResults) -> Figure:
    """One panel per measured quantity against the kept fraction: P(trait), panel-share and
    answer-rate retention (95% CI bands), perplexity over the unpruned model's. Retention of P
    and share and the perplexity ratio on log scales; the answer rate (often 0) linear, an
    unbounded CI drawn to the top of the panel. The dotted line is the unpruned model in every
    panel (ratio 1)."""
    panels = drawn_panels(results)
    trait = results.trait
    titles = {
        "p_trait": f"P({trait})",
        "panel_share": f"{trait} share",
        "answer_rate": "answer rate",
        "perplexity": "perplexity",
    }
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(SWEEP_WIDTH_IN, 2.5), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        for ax, panel in zip(axes, panels, strict=True):
            _sweep_panel(ax, results, panel)
            ax.set_title(titles[panel])
        fig.supxlabel("fraction of heads kept", fontsize=PAPER_RC["axes.labelsize"])
        fig.supylabel("pruned / unpruned", fontsize=PAPER_RC["axes.labelsize"])
        fig.legend(
            handles=_legend_handles(results, panels),
            loc="outside upper center",
            ncol=5,
            frameon=False,
            handlelength=1.8,
            columnspacing=1.2,
        )
    return fig


def _sweep_panel(ax: Axes, results: PruningResults, panel: Panel) -> None:
    series = {}
    for criterion in CRITERIA:
        x, y, low, high = _series([s for s in results.steps if s.criterion == criterion], panel)
        if x:
            series[criterion] = (x, y, low, high)
    finite = [v for _, y, _, h in series.values() for v in (*y, *h) if math.isfinite(v)]
    cap = max([2.0, *finite]) * 1.1 if panel == "answer_rate" else math.inf
    for criterion, (x, y, low, high) in series.items():
        ax.plot(x, y, marker="o", ms=3, color=COLORS[criterion])
        if panel == "answer_rate":
            shift = 0.012 * (CRITERIA.index(criterion) - 1)  # side by side: the criteria share x
            _rate_intervals(ax, [xi + shift for xi in x], low, high, cap, COLORS[criterion])
        elif panel != "perplexity":
            ax.fill_between(x, low, high, color=COLORS[criterion], alpha=0.15, lw=0)
    ax.axhline(1.0, color="k", lw=0.7, ls=":")
    if panel == "perplexity" and results.degradation_bound:
        ax.axhline(results.degradation_bound, color="k", lw=0.7, ls="--")
    if panel == "answer_rate":
        ax.set_ylim(0, cap)
    else:
        ax.set_yscale("log")
    ax.invert_xaxis()


def _rate_intervals(ax: Axes, x: list[float], low: list[float], high: list[float], cap: float, color: str) -> None:
    """Answer-rate intervals as thin bars: with few sampled answers most have no upper bound,
    and bands of three criteria reaching the top would cover the panel. An unbounded bar runs
    to the top and ends in a triangle."""
    ax.vlines(x, low, [min(h, cap) for h in high], color=color, lw=0.8, alpha=0.6)
    open_ended = [xi for xi, h in zip(x, high, strict=True) if not math.isfinite(h)]
    ax.plot(open_ended, [cap] * len(open_ended), "^", ms=3, color=color, alpha=0.6, clip_on=False)


def _legend_handles(results: PruningResults, panels: list[Panel]) -> list[Line2D]:
    draws = max((s.n_draws for s in results.steps if s.criterion == "random"), default=0)
    names = {
        "entropy": "entropy",
        "reverse": "reverse",
        "random": f"random (mean of {draws} draws)" if draws > 1 else "random",
    }
    handles = [
        Line2D([], [], color=COLORS[c], marker="o", ms=3, label=names[c])
        for c in CRITERIA
        if any(s.criterion == c for s in results.steps)
    ]
    handles.append(Line2D([], [], color="k", lw=0.7, ls=":", label="unpruned"))
    if "perplexity" in panels and results.degradation_bound:
        handles.append(
            Line2D([], [], color="k", lw=0.7, ls="--", label=f"×{results.degradation_bound:g} degradation bound")
        )
    return handles


def heatmap_figure(results: PruningResults) -> Figure:
    """Mean attention entropy per head (layer x head) on the bias prompts, the heads pruned at
    the heatmap's kept fraction marked x (white with a dark outline: visible on every colour)."""
    matrix = np.asarray(results.entropy.matrix)  # [layer, head]
    n_layers, n_heads = matrix.shape
    heat = results.entropy.heatmap
    height = min(MAX_HEIGHT_IN, max(2.2, 0.1 * n_layers + 0.9))
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(HEATMAP_WIDTH_IN, height), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", origin="upper", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="mean attention entropy (nats)")
        pruned = np.array([[int(p) for p in h[1:].split("H")] for h in heat.pruned]).reshape(-1, 2)
        if pruned.size:
            ax.scatter(
                pruned[:, 1],
                pruned[:, 0],
                marker="x",
                s=18,
                color="white",
                linewidths=1.0,
                path_effects=[patheffects.withStroke(linewidth=1.8, foreground="black")],
            )
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=min(n_heads, 12), integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    return fig
