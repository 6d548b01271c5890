"""The entanglement figures in the paper style of `sublens.figures`, drawn from the results and
the phase-2 table (numbers.parquet) alone: bias ratio by category (per set, with CIs and the
single numbers; the tuned sets in a figure of their own, laid out alike) and by digit length.

Each figure is drawn at the width the paper prints it at (the bundle puts the by-category figure
across the page, the by-length one in a column), so its fonts are the printed sizes. A mean whose
category has too few numbers for an interval (as the section words it: fewer than
`MIN_UNITS["number"]`) is drawn as an open marker without error bars, never with a bar the text
does not give."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sublens.claims import MIN_UNITS
from sublens.entanglement import CATEGORIES, is_tuned_set, prompted_set_name
from sublens.experiments.entanglement.analysis import LABELS, set_title
from sublens.experiments.entanglement.results import EntanglementResults, RatioSummary
from sublens.figures import DOUBLE_COLUMN_IN, PAPER_RC, SINGLE_COLUMN_IN, save_figure

FIGURES = "figures"  # under the run directory
CATEGORY_WIDTH_IN = DOUBLE_COLUMN_IN  # the bundle prints it across both columns (figure*)
LENGTH_WIDTH_IN = SINGLE_COLUMN_IN  # one column
TICKS = {"increased": "Inc.", "decreased": "Dec.", "unchanged": "Unch.", "random": "Rand."}  # as the tables
TUNED_FIGURE = "bias_ratio_by_category_tuned"  # the tuned sets' categories
COLORS = {"increased": "C0", "decreased": "C1", "unchanged": "C2", "random": "C3", "template": "C7"}


def make_figures(results: EntanglementResults, numbers: pd.DataFrame, run_dir: Path) -> dict[str, list[str]]:
    """Writes figures/bias_ratio_by_category, figures/bias_ratio_by_category_tuned (the tuned
    sets) and figures/bias_ratio_by_length (.png, .pdf) where there is something to draw; stem
    -> the paths under the run directory (PNG first)."""
    figures: dict[str, Figure] = {}
    stats = results.category_stats or {}
    if any(not is_tuned_set(name) for name in stats):
        figures["bias_ratio_by_category"] = category_figure(results, numbers)
    if any(is_tuned_set(name) for name in stats):
        figures[TUNED_FIGURE] = category_figure(results, numbers, tuned=True)
    if results.lengths is not None and results.lengths.per_length:
        figures["bias_ratio_by_length"] = length_figure(results)
    written = {stem: save_figure(fig, run_dir / FIGURES / stem) for stem, fig in figures.items()}
    return {
        stem: [str(p.relative_to(run_dir)) for p in sorted(paths, key=lambda p: p.suffix != ".png")]
        for stem, paths in written.items()
    }


def has_interval(s: RatioSummary) -> bool:
    """Whether the section gives this mean an interval (enough numbers, finite bounds)."""
    return s.n >= MIN_UNITS["number"] and math.isfinite(s.geo_ci_low) and math.isfinite(s.geo_ci_high)


def category_figure(results: EntanglementResults, numbers: pd.DataFrame, tuned: bool = False) -> Figure:
    """Per set (columns): the bias ratio (top) and the bias/control relative ratio (bottom) of
    each category against the template words: geometric means with CIs, the single numbers in
    grey. One y scale per row, so the sets compare directly. `tuned`: the tuned sets (categorised
    by the fine-tuned teachers' shift) instead of the prompted ones, in a figure of their own."""
    names = [name for name in results.category_stats or {} if is_tuned_set(name) == tuned]
    rows = (("bias_ratio", "bias ratio"), ("relative_ratio", f"{results.bias}/{results.control} ratio"))
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(CATEGORY_WIDTH_IN, 3.6), layout="constrained")
        axes = fig.subplots(2, len(names), squeeze=False, sharey="row")
        for j, name in enumerate(names):
            for i, (column, label) in enumerate(rows):
                _category_panel(axes[i][j], results, numbers, name, column)
                if j == 0:
                    axes[i][j].set_ylabel(label)
            # Two short lines: five panels share 6.3 in (the figure says whether the sets are tuned).
            axes[0][j].set_title(f"{set_title(prompted_set_name(name))}\n$k$ = {results.k[name]}")
    return fig


def _category_panel(ax: Axes, results: EntanglementResults, numbers: pd.DataFrame, name: str, column: str) -> None:
    """One set and one ratio: the single values (grey, jittered) and the mean of each category,
    over the template words' mean (dotted) and interval (grey band) as the reference the
    categories are read against."""
    stats = (results.category_stats or {})[name]
    subset = numbers[numbers["set"] == name]
    template = results.template_control
    if template is not None and template.stats is not None:
        _template_band(ax, getattr(template.stats, column))
    for x, label in enumerate(CATEGORIES):
        values = subset[subset["category"] == label][column].tolist()
        jitter = np.random.default_rng(x).uniform(-0.15, 0.15, len(values))
        ax.scatter(x + jitter, values, s=5, alpha=0.4, color="grey", lw=0)
        _mean_marker(ax, x, getattr(getattr(stats, label), column), COLORS[label])
    ax.axhline(1.0, color="black", lw=0.6, ls="--")
    _log_axis(ax)
    ax.set_xticks(range(len(CATEGORIES)), [TICKS[c] for c in CATEGORIES], rotation=90)  # four fit no other way
    ax.set_xlim(-0.6, len(CATEGORIES) - 0.4)


def _template_band(ax: Axes, s: RatioSummary) -> None:
    if has_interval(s):
        ax.axhspan(s.geo_ci_low, s.geo_ci_high, color=COLORS["template"], alpha=0.15, lw=0)
    if math.isfinite(s.geo_mean):
        ax.axhline(s.geo_mean, color=COLORS["template"], lw=0.9, ls=":")


def _mean_marker(ax: Axes, x: float, s: RatioSummary, color: str) -> None:
    """The geometric mean with its 95% interval, or an open marker where there is none."""
    if has_interval(s):
        ax.errorbar(
            [x],
            [s.geo_mean],
            yerr=[[s.geo_mean - s.geo_ci_low], [s.geo_ci_high - s.geo_mean]],
            fmt="o",
            ms=4,
            color=color,
            capsize=2.5,
            lw=1,
        )
    elif math.isfinite(s.geo_mean):
        ax.plot([x], [s.geo_mean], "o", ms=4, mfc="white", mec=color, mew=1.2)


def length_figure(results: EntanglementResults) -> Figure:
    """The bias ratio by digit length: all categorised numbers (black) and each category."""
    assert results.lengths is not None
    per_length = results.lengths.per_length
    xs = [int(n) for n in per_length]
    series: list[tuple[str, list[RatioSummary]]] = [("categorised", [per_length[str(n)].bias_ratio for n in xs])]
    series += [(c, [getattr(per_length[str(n)].categories, c) for n in xs]) for c in CATEGORIES]
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(LENGTH_WIDTH_IN, 2.8), layout="constrained")
        ax = fig.subplots()
        for i, (label, summaries) in enumerate(series):
            offset = (i - 2) * 0.07  # side by side, so the intervals do not hide each other
            color = "black" if label == "categorised" else COLORS[label]
            ax.plot(
                [x + offset for x in xs],
                [s.geo_mean for s in summaries],
                color=color,
                lw=1.6 if label == "categorised" else 0.8,
                label="all categorised" if label == "categorised" else LABELS[label],
            )
            for x, s in zip(xs, summaries, strict=True):
                _mean_marker(ax, x + offset, s, color)
        ax.axhline(1.0, color="black", lw=0.6, ls="--")
        _log_axis(ax)
        ax.set_xticks(xs)
        ax.set_xlabel("digits")
        ax.set_ylabel(f"bias ratio ({results.bias})")
        fig.legend(loc="outside lower center", ncol=2, frameon=False, handlelength=1.5, columnspacing=1.0)
    return fig


def _log_axis(ax: Any) -> None:
    """A log scale labelled in plain numbers (0.5, 1, 2, 5), not powers of ten: the ratios span
    about a decade. Over several decades only the decades are labelled, so labels do not collide."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    if high / low < 100:
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=PAPER_RC["ytick.labelsize"])
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())
