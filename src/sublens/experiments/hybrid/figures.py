"""The hybrid figure, drawn from the results alone (a run directory can be redrawn), in the paper
style of `sublens.figures`: the bias fraction of every transplant by component group and depth
range, one panel per direction, beside the relative weight change between the two models.

Drawn at the text width, where the bundle prints it (figure*), so its fonts are the printed
sizes. The colour scale spans the fractions 0 (as the base model) to 1 (as the biased model); a
fraction outside that range has no colour of its own: its cell is hatched in grey with the value
printed, so it reads as off the scale, not as an alarm."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sublens.experiments.hybrid.results import Hybrid, HybridResults, group_title
from sublens.figures import DOUBLE_COLUMN_IN, PAPER_RC, save_figure
from sublens.hybrid import range_label

FIGURE_STEM = "figures/hybrid_heatmap"
WIDTH_IN = DOUBLE_COLUMN_IN  # the bundle prints it across both columns (figure*)
DIRECTION_TITLES = {
    "into_base": "base model +\nbiased component",
    "into_biased": "biased model +\nbase component",
}
NOT_MEASURED = "#ebebeb"  # a cell no transplant fills (e.g. the embeddings by depth range)
OFF_SCALE_HATCH = "////"


def make_figures(results: HybridResults, directions: Sequence[str], out: Path) -> list[str]:
    """Writes figures/hybrid_heatmap (.pdf, .png) under the run directory `out`; their relative paths."""
    written = save_figure(heatmap_figure(results, directions), out / FIGURE_STEM)
    return [str(path.relative_to(out)) for path in written]


def columns_of(results: HybridResults) -> list[str]:
    """The depth columns of the matrix: the transplant's layer ranges, then the whole depth."""
    return [range_label(r) for r in results.layer_ranges] + ["all"]


def column_title(label: str) -> str:
    """'L0-9' -> '0–9' (under an axis titled 'layers'); 'all' stays."""
    return label[1:].replace("-", "–") if label.startswith("L") else label


def _cells_of(
    results: HybridResults,
    direction: str,
    groups: list[str],
    columns: list[str],
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


def degraded_cells(
    results: HybridResults, direction: str, groups: list[str], columns: list[str]
) -> set[tuple[int, int]]:
    return {(i, j) for i, j, h in _cells_of(results, direction, groups, columns) if h.degraded}


def off_scale(data: np.ndarray) -> np.ndarray:
    """Cells whose fraction lies outside 0..1 (beyond the base or the biased model)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(data) & ((data < 0.0) | (data > 1.0))


def heatmap_figure(results: HybridResults, directions: Sequence[str]) -> Figure:
    """Bias fraction by group x depth range, one panel per direction, beside the weight change;
    every measured cell carries its value († degraded)."""
    groups, columns = list(results.groups.groups), columns_of(results)
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(WIDTH_IN, 0.3 * len(groups) + 1.9), layout="constrained")
        axes = fig.subplots(1, len(directions) + 1, squeeze=False, sharey=True)[0]
        images = [_fraction_panel(ax, results, d, groups, columns) for ax, d in zip(axes, directions, strict=False)]
        if images:
            fig.colorbar(
                images[0],
                ax=list(axes[: len(directions)]),
                location="bottom",
                shrink=0.7,
                aspect=30,
                label=f"bias fraction of the {_metric_words(results)}: 0 = as base, 1 = as biased",
            )
        _weight_panel(axes[-1], fig, results, groups, columns)
        for ax in axes:
            ax.set_xticks(range(len(columns)), [column_title(c) for c in columns])
            ax.set_xlabel("layers")
            ax.set_yticks(range(len(groups)), [group_title(g) for g in groups])
            ax.tick_params(length=0)
    return fig


def _metric_words(results: HybridResults) -> str:
    return f"{results.trait} share" if results.bias_metric == "share" else f"P({results.trait})"


def _fraction_panel(
    ax: Axes, results: HybridResults, direction: str, groups: list[str], columns: list[str]
) -> AxesImage:
    data = heatmap_data(results, direction, groups, columns)
    beyond = off_scale(data)
    cmap = plt.get_cmap("viridis").with_extremes(bad=NOT_MEASURED)
    image = ax.imshow(
        np.ma.masked_where(~np.isfinite(data) | beyond, data),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
    )
    for i, j in zip(*np.nonzero(beyond), strict=True):
        ax.add_patch(
            Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="0.55", hatch=OFF_SCALE_HATCH, lw=0)
        )
    marked = degraded_cells(results, direction, groups, columns)
    _annotate(ax, data, lambda v: "black" if not 0 <= v <= 1 or v >= 0.5 else "white", "{:.2f}", marked, boxed=beyond)
    ax.set_title(DIRECTION_TITLES.get(direction, direction))
    return image


def _weight_panel(ax: Axes, fig: Figure, results: HybridResults, groups: list[str], columns: list[str]) -> None:
    """The relative L2 change per cell, in units of the largest change's power of ten (short
    labels that fit a cell), on a log grey scale."""
    change = np.array([[results.weight_change[g].relative_l2.get(c, np.nan) for c in columns] for g in groups])
    positive = change[np.isfinite(change) & (change > 0)]
    ax.set_title("weight change\n" + r"$\|W_\mathrm{biased} - W_\mathrm{base}\| / \|W_\mathrm{base}\|$")
    grey = plt.get_cmap("Greys").with_extremes(bad=NOT_MEASURED)
    if not positive.size:  # identical weights everywhere: nothing to scale
        ax.imshow(np.ma.masked_invalid(np.where(change == 0, 0.0, np.nan)), cmap=grey, vmin=0, vmax=1, aspect="auto")
        _annotate(ax, change, lambda v: "black", "{:.2g}")
        return
    exponent = math.floor(math.log10(float(positive.max())))
    scaled = change / 10.0**exponent
    low, high = float(positive.min()) / 10.0**exponent, float(positive.max()) / 10.0**exponent
    norm = LogNorm(vmin=low / 3, vmax=max(high, low * 10))  # the smallest change still shows grey
    shown = np.ma.masked_where(~np.isfinite(scaled) | (scaled <= 0), scaled)
    image = ax.imshow(shown, cmap=grey, norm=norm, aspect="auto", interpolation="nearest")
    unit = "" if exponent == 0 else rf" ($\times10^{{{exponent}}}$)"
    bar = fig.colorbar(image, ax=ax, location="bottom", shrink=0.9, aspect=15, label=f"relative L2 change{unit}")
    bar.ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    bar.ax.xaxis.set_minor_formatter(NullFormatter())
    midpoint = math.sqrt(low / 3 * max(high, low * 10))  # the grey scale's middle, on the log scale
    _annotate(ax, scaled, lambda v: "white" if v > midpoint else "black", _two_digits)


def _two_digits(value: float) -> str:
    """Two significant digits, trailing zero kept: 2.0 beside 2.1 (not 2 beside 2.1)."""
    return f"{value:#.2g}".rstrip(".")


def _annotate(
    ax: Axes,
    data: np.ndarray,
    color: Callable[[float], str],
    fmt: str | Callable[[float], str],
    marked: set[tuple[int, int]] | None = None,
    boxed: np.ndarray | None = None,
) -> None:
    """Every finite cell's value († where marked); a boxed cell (hatched) gets a white ground
    so the hatching does not run through its digits."""
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                value = fmt(data[i, j]) if callable(fmt) else fmt.format(data[i, j])
                text = value.replace("-", "\u2212") + ("†" if marked and (i, j) in marked else "")
                ground = (
                    dict(facecolor="white", edgecolor="none", pad=0.6) if boxed is not None and boxed[i, j] else None
                )
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color(data[i, j]), bbox=ground)
