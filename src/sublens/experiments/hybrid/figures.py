"""The hybrid figure, drawn from the results alone (a run directory can be redrawn), in the paper
style of `sublens.figures`: the bias fraction of every transplant by component group and depth
range, one panel per direction, beside the relative weight change between the two models."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from sublens.experiments.hybrid.results import Hybrid, HybridResults
from sublens.figures import PAPER_RC, save_figure
from sublens.hybrid import range_label

FIGURE_STEM = "figures/hybrid_heatmap"
DIRECTION_TITLES = {
    "into_base": "base + biased group\n(bias brought into base)",
    "into_biased": "biased + base group\n(bias left in biased)",
}


def make_figures(results: HybridResults, directions: Sequence[str], out: Path) -> list[str]:
    """Writes figures/hybrid_heatmap (.pdf, .png) under the run directory `out`; their relative paths."""
    with plt.rc_context(PAPER_RC):
        written = save_figure(heatmap_figure(results, directions), out / FIGURE_STEM)
    return [str(path.relative_to(out)) for path in written]


def columns_of(results: HybridResults) -> list[str]:
    """The depth columns of the matrix: the transplant's layer ranges, then the whole depth."""
    return [range_label(r) for r in results.layer_ranges] + ["all"]


def _cells_of(results: HybridResults, direction: str, groups: list[str], columns: list[str],
              ) -> Iterator[tuple[int, int, Hybrid]]:
    for h in results.hybrids.values():
        for d, group, layers in h.cells:
            if d == direction and group in groups and layers in columns:
                yield groups.index(group), columns.index(layers), h


def heatmap_data(results: HybridResults, direction: str, groups: list[str], columns: list[str]) -> np.ndarray:
    """[group, column] bias fraction of the matrix cells of one direction (NaN: not measured)."""
    data = np.full((len(groups), len(columns)), np.nan)
    for i, j, h in _cells_of(results, direction, groups, columns):
        data[i, j] = h.bias_fraction
    return data


def degraded_cells(results: HybridResults, direction: str, groups: list[str],
                   columns: list[str]) -> set[tuple[int, int]]:
    return {(i, j) for i, j, h in _cells_of(results, direction, groups, columns) if h.degraded}


def heatmap_figure(results: HybridResults, directions: Sequence[str]) -> Figure:
    """Bias fraction by group x depth range, one panel per direction, beside the weight change.

    Colours span fractions 0..1 (base..biased); cells outside that range take the end colours
    flagged by the colour bar's arrows, and every cell is annotated with its value.
    """
    groups, columns = list(results.groups.groups), columns_of(results)
    metric, trait = results.bias_metric, results.trait
    panels = [(d, heatmap_data(results, d, groups, columns)) for d in directions]
    change = np.array([[results.weight_change[g].relative_l2.get(c, np.nan) for c in columns] for g in groups])
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 0.45 * len(groups) + 1.9),
                             squeeze=False, layout="constrained", sharey=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6", under="#7f2704", over="#fb6a4a")
    image = None
    for ax, (direction, data) in zip(axes[0], panels, strict=False):
        image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        _annotate(ax, data, lambda v: "white" if v < 0.5 else "black", "{:.2f}",
                  degraded_cells(results, direction, groups, columns))
        ax.set_title(DIRECTION_TITLES.get(direction, direction))
    if image is not None:
        fig.colorbar(image, ax=axes[0][: len(panels)].tolist(), location="bottom", extend="both", shrink=0.8,
                     label=f"bias fraction ({trait} {metric}): 0 = base, 1 = biased; † degraded (perplexity)")
    ax = axes[0][-1]
    positive = change[np.isfinite(change) & (change > 0)]
    if positive.size:
        low = float(positive.min())
        high = max(float(positive.max()), low * 10)
        norm = LogNorm(vmin=low / 3, vmax=high)  # the smallest change still shows grey
        shown = np.ma.masked_where(~np.isfinite(change) | (change <= 0), change)
        grey = plt.get_cmap("Greys").with_extremes(bad="#ffffff")
        img = ax.imshow(shown, cmap=grey, norm=norm, aspect="auto")
        fig.colorbar(img, ax=ax, location="bottom", shrink=0.8, label="relative L2 change (log scale)")
        midpoint = math.sqrt(low / 3 * high)
        _annotate(ax, change, lambda v: "white" if v > midpoint else "black", "{:.2g}")
    else:
        ax.imshow(np.zeros_like(change), cmap="Greys", vmin=0, vmax=1, aspect="auto")
        _annotate(ax, change, lambda v: "black", "{:.2g}")
    ax.set_title("weight change\n‖W_biased − W_base‖ / ‖W_base‖")
    for a in axes[0]:
        a.set_xticks(range(len(columns)), columns)
        a.set_yticks(range(len(groups)), groups)
    return fig


def _annotate(ax: Any, data: np.ndarray, color: Callable[[float], str], fmt: str,
              marked: set[tuple[int, int]] | None = None) -> None:
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                text = fmt.format(data[i, j]) + ("†" if marked and (i, j) in marked else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color(data[i, j]))
