"""The entanglement figures in the paper style of `sublens.figures`, drawn from the results and
the phase-2 table (numbers.parquet) alone: bias ratio by category (per set, with CIs and the
single numbers) and by digit length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from sublens.entanglement import CATEGORIES
from sublens.experiments.entanglement.analysis import LABELS
from sublens.experiments.entanglement.results import EntanglementResults, RatioSummary
from sublens.figures import PAPER_RC, save_figure

FIGURES = "figures"  # under the run directory


def make_figures(results: EntanglementResults, numbers: pd.DataFrame, run_dir: Path) -> dict[str, list[str]]:
    """Writes figures/bias_ratio_by_category and figures/bias_ratio_by_length (.png, .pdf) where
    there is something to draw; stem -> the paths under the run directory (PNG first)."""
    figures: dict[str, Figure] = {}
    with plt.rc_context(PAPER_RC):
        if results.category_stats:
            figures["bias_ratio_by_category"] = category_figure(results, numbers)
        if results.lengths is not None and results.lengths.per_length:
            figures["bias_ratio_by_length"] = length_figure(results)
        written = {stem: save_figure(fig, run_dir / FIGURES / stem) for stem, fig in figures.items()}
    return {stem: [str(p.relative_to(run_dir)) for p in sorted(paths, key=lambda p: p.suffix != ".png")]
            for stem, paths in written.items()}


def _error_bar(s: RatioSummary) -> list[list[float]]:
    return [[s.geo_mean - s.geo_ci_low], [s.geo_ci_high - s.geo_mean]]


def category_figure(results: EntanglementResults, numbers: pd.DataFrame) -> Figure:
    """Per set (columns): the bias ratio (top) and the relative ratio (bottom) of each category
    and of the template words: geometric means with CIs, the single numbers in grey."""
    stats_by_set = results.category_stats or {}
    template = results.template_control
    names = list(stats_by_set)
    fig, axes = plt.subplots(2, len(names), figsize=(3.0 * len(names) + 0.5, 5.2),
                             squeeze=False, sharey="row", layout="constrained")
    labels = [*CATEGORIES, "template"]
    for j, name in enumerate(names):
        stats = stats_by_set[name]
        subset = numbers[numbers["set"] == name]
        for i, column in enumerate(("bias_ratio", "relative_ratio")):
            ax = axes[i][j]
            for x, label in enumerate(labels):
                if label == "template":
                    if template is None or template.stats is None:
                        continue
                    summary = getattr(template.stats, column)
                    values = [getattr(w, column) for w in template.per_word]
                else:
                    summary = getattr(getattr(stats, label), column)
                    values = subset[subset["category"] == label][column].tolist()
                jitter = np.random.default_rng(x).uniform(-0.15, 0.15, len(values))
                ax.scatter(x + jitter, values, s=6, alpha=0.35, color="grey", lw=0)
                ax.errorbar([x], [summary.geo_mean], yerr=_error_bar(summary), fmt="o",
                            color="C7" if label == "template" else f"C{x}", capsize=3)
            ax.axhline(1.0, color="black", lw=0.6, ls="--")
            _log_axis(ax)
            ax.set_xticks(range(len(labels)), [LABELS[c] for c in labels], rotation=35)
            if i == 0:
                ax.set_title(f"{name} (k={results.k[name]})")
            if j == 0:
                ax.set_ylabel(f"{column.replace('_', ' ')} ({results.bias})")
    return fig


def length_figure(results: EntanglementResults) -> Figure:
    """The bias ratio by digit length: all categorised numbers (black) and each category."""
    assert results.lengths is not None
    per_length = results.lengths.per_length
    fig, ax = plt.subplots(figsize=(4.2, 3.2), layout="constrained")
    xs = [int(n) for n in per_length]
    series: list[tuple[str, list[RatioSummary]]] = [
        ("categorised", [per_length[str(n)].bias_ratio for n in xs])]
    series += [(c, [getattr(per_length[str(n)].categories, c) for n in xs]) for c in CATEGORIES]
    for i, (label, summaries) in enumerate(series):
        offset = (i - 2) * 0.07
        ax.errorbar(
            [x + offset for x in xs],
            [s.geo_mean for s in summaries],
            yerr=[[s.geo_mean - s.geo_ci_low for s in summaries],
                  [s.geo_ci_high - s.geo_mean for s in summaries]],
            marker="o",
            capsize=2,
            lw=1.8 if label == "categorised" else 0.8,
            color="black" if label == "categorised" else f"C{i - 1}",
            label=LABELS.get(label, label),
        )
    ax.axhline(1.0, color="black", lw=0.6, ls="--")
    _log_axis(ax)
    ax.set_xticks(xs)
    ax.set_xlabel("digits")
    ax.set_ylabel(f"bias ratio ({results.bias}), geometric mean")
    ax.legend(fontsize=7)
    return fig


def _log_axis(ax: Any) -> None:
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=6)
