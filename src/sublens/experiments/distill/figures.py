"""The distill figures in the paper style of `sublens.figures`, each drawn at the width it is
printed at, so that its fonts are the printed sizes:

- ``distill_losses`` (text width): LM and SHD loss per optimizer step of every student;
- ``distill_alphas`` (text width): the squeezing weight α per student layer, one quantile
  summary per teacher (median, interquartile range, 10th to 90th percentile) instead of one
  small histogram per layer, which no longer read at print size;
- ``distill_fit_<role>`` (column width): KL per layer to a teacher's squeezed maps, before
  and after training;
- ``distill_maps`` (text width): the attention maps of one held-out text.

The first three are drawn from the results alone (a run directory can be redrawn); the maps
need arrays the run captures (`maps.draw_figures`), handed over as `MapPanel`s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sublens.experiments.distill.results import AlphaSummary, DistillResults
from sublens.figures import DOUBLE_COLUMN_IN, MIN_FONT_PT, PAPER_RC, SINGLE_COLUMN_IN, save_figure
from sublens.report.names import arm_label

# One colour per student and per teacher: a student distilled from a teacher shares its colour.
STUDENT_COLORS = {"initial": "black", "shd_biased": "tab:orange", "lm_only": "tab:gray", "shd_base": "tab:blue"}
TEACHER_COLORS = {"biased": "tab:orange", "base": "tab:blue"}
TITLE_PT = 8.0  # panel titles of the map grid
MAX_LAYER_TICKS = 24  # one tick per layer up to this many (8 pt labels across the text width)


class MapPanel(NamedTuple):
    """One attention map: title, [rows, cols] matrix, row and column token labels, axis names."""

    title: str
    matrix: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    x_label: str = "key"
    y_label: str = "query"


def make_figures(results: DistillResults, out: Path, maps: Sequence[MapPanel] = (), maps_title: str = "") -> list[Path]:
    """Writes every figure the results (and the captured maps) allow into `out` (.pdf, .png)."""
    written: list[Path] = []
    if results.arms:
        written += save_figure(loss_figure(results), out / "distill_losses")
    alphas = alpha_figure(results)
    if alphas is not None:
        written += save_figure(alphas, out / "distill_alphas")
    for role in results.teachers:
        written += save_figure(fit_figure(results, role), out / f"distill_fit_{role}")
    if maps:
        written += save_figure(maps_figure(maps, maps_title), out / "distill_maps")
    return written


def _student_label(state: str) -> str:
    return "initial" if state == "initial" else arm_label(state)


# ---- training ---------------------------------------------------------------------------------
def loss_figure(results: DistillResults) -> Figure:
    """LM loss (answer tokens) and SHD loss (KL, mean over the distilled layers) per step."""
    with plt.rc_context(PAPER_RC):
        fig, (lm_ax, shd_ax) = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN_IN, 2.6))
        for arm, record in results.arms.items():
            steps = [step for step, _ in record.train.loss_curve]
            style = {"label": arm_label(arm), "color": STUDENT_COLORS.get(arm), "lw": 1.0}
            lm_ax.plot(steps, [loss for _, loss in record.train.loss_curve], **style)
            shd = record.train.extra_curves.get("shd") or []
            if any(v is not None for v in shd):
                shd_ax.plot(steps, [math.nan if v is None else v for v in shd], **style)
        if not shd_ax.lines:  # only the LM-only student was trained
            shd_ax.text(
                0.5,
                0.5,
                "no student trained with SHD",
                ha="center",
                va="center",
                transform=shd_ax.transAxes,
                color="0.4",
            )
        lm_ax.set_title("LM loss (answer tokens)")
        shd_ax.set_title("SHD loss (KL, mean over layers)")
        for ax in (lm_ax, shd_ax):
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("nats")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        # above the panels: inside, the legend covered the curves of the first optimizer steps
        handles, labels = lm_ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=max(len(labels), 1), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig


# ---- α ----------------------------------------------------------------------------------------
def _layers_with_alphas(results: DistillResults) -> list[int]:
    return sorted(
        {
            int(layer)
            for per_layer in results.alphas.values()
            for layer, s in per_layer.items()
            if s.quantiles is not None
        }
    )


def _quantile_marks(ax: Axes, x: float, s: AlphaSummary, color: str) -> None:
    """A thin line from the 10th to the 90th percentile, a thick bar over the interquartile
    range, and an open circle at the median."""
    q = s.quantiles
    if q is None:
        return
    ax.vlines(x, q.q10, q.q90, color=color, lw=0.9)
    ax.vlines(x, q.q25, q.q75, color=color, lw=4.0)
    ax.plot([x], [q.median], marker="o", ms=4.0, mfc="white", mec=color, mew=1.0, ls="none")


def alpha_figure(results: DistillResults) -> Figure | None:
    """The squeezing weight α per student layer: one quantile summary per teacher, side by side,
    and a dotted line at α = ½ (both heads of a merged pair weighted equally). None: nothing was
    squeezed (the student has as many heads as the teachers)."""
    layers = _layers_with_alphas(results)
    if not layers:
        return None
    roles = [role for role in results.alphas if any(s.quantiles for s in results.alphas[role].values())]
    offsets = np.linspace(-0.17, 0.17, len(roles)) if len(roles) > 1 else np.zeros(1)
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(DOUBLE_COLUMN_IN, 2.4))
        ax.axhline(0.5, color="0.5", lw=0.7, ls=":")
        for offset, role in zip(offsets, roles, strict=True):
            color = TEACHER_COLORS.get(role, "black")
            for layer in layers:
                summary = results.alphas[role].get(str(layer))
                if summary is not None:
                    _quantile_marks(ax, layer + float(offset), summary, color)
            ax.plot([], [], color=color, lw=4.0, label=f"{role} teacher")  # the legend's key
        ax.set_xlim(layers[0] - 0.7, layers[-1] + 0.7)
        ax.set_ylim(0.0, 1.0)
        if len(layers) <= MAX_LAYER_TICKS:
            ax.set_xticks(layers)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_LAYER_TICKS, integer=True))
        ax.set_xlabel("student layer")
        ax.set_ylabel("squeezing weight α")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(roles), frameon=False)
        fig.tight_layout()
    return fig


# ---- fit --------------------------------------------------------------------------------------
def fit_figure(results: DistillResults, role: str) -> Figure:
    """KL per student layer to one teacher's squeezed maps, for every student state, at the
    training temperature."""
    temperature = results.shd.temperature
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN_IN, 2.4))
        for state, by_role in results.fit.items():
            fit = by_role.get(role)
            kl = fit.kl(temperature) if fit is not None else None
            if kl is None:
                continue
            layers = sorted(kl.per_layer, key=int)
            ax.plot(
                [int(s) for s in layers],
                [kl.per_layer[s] for s in layers],
                marker="o",
                ms=2.5,
                lw=1.0,
                color=STUDENT_COLORS.get(state),
                label=_student_label(state),
            )
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("student layer")
        ax.set_ylabel(f"KL to {role} teacher (nats)")
        ax.set_title(f"T = {temperature:g}")
        ax.legend(ncol=2, frameon=False, fontsize=MIN_FONT_PT)
        fig.tight_layout()
    return fig


# ---- attention maps ---------------------------------------------------------------------------
def _labels_fit(n: int, axis_inches: float) -> bool:
    """Whether n token labels fit along an axis at the smallest printed size."""
    return n * MIN_FONT_PT * 1.3 <= axis_inches * 72


SATURATION_QUANTILE = 0.99  # of the weights beside the sink: the top colour of a map's scale


def colour_ceiling(matrix: np.ndarray) -> float:
    """The weight shown in the top colour: the SATURATION_QUANTILE of the map's weights outside
    the first key (the attention sink, which would otherwise take the whole scale and leave the
    rest dark); larger weights, the sink's included, print in that same colour."""
    rest = matrix[:, 1:] if matrix.shape[1] > 1 else matrix
    weights = rest[rest > 0]
    ceiling = float(np.quantile(weights, SATURATION_QUANTILE)) if weights.size else 0.0
    return max(ceiling, 1e-9)


def _draw_map(ax: Axes, panel: MapPanel, axis_inches: float) -> None:
    """A map on a square-root colour scale up to `colour_ceiling`, so that structure beside the
    attention sink stays visible; token labels where they fit at print size, else token
    positions."""
    matrix = panel.matrix
    ax.imshow(matrix, cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=colour_ceiling(matrix)))
    ax.set_title(panel.title, fontsize=TITLE_PT)
    rows, cols = matrix.shape
    if _labels_fit(max(rows, cols), axis_inches):
        ax.set_xticks(range(cols), panel.col_labels, rotation=90, fontsize=MIN_FONT_PT)
        ax.set_yticks(range(rows), panel.row_labels, fontsize=MIN_FONT_PT)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
        ax.tick_params(labelsize=MIN_FONT_PT)
    ax.set_xlabel(panel.x_label)
    ax.set_ylabel(panel.y_label)


def _inner_axis_names_dropped(axes: np.ndarray, panels: Sequence[MapPanel]) -> None:
    """Axis names once per row and column of the grid: the query name on the left column only,
    the key name under the lowest map of each column only (the maps fill the room saved)."""
    cols = axes.shape[1]
    for index in range(len(panels)):
        row, col = divmod(index, cols)
        ax = axes[row, col]
        if col > 0 and panels[index].y_label == panels[index - 1].y_label:
            ax.set_ylabel("")
        below = index + cols
        if below < len(panels) and panels[below].x_label == panels[index].x_label:
            ax.set_xlabel("")


def maps_figure(panels: Sequence[MapPanel], title: str = "", columns: int = 4) -> Figure:
    """Attention maps side by side at the text width, `columns` to a row."""
    cols = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / cols)
    side = DOUBLE_COLUMN_IN / cols
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(
            rows, cols, figsize=(DOUBLE_COLUMN_IN, side * rows + (0.3 if title else 0.0)), squeeze=False
        )
        for ax, panel in zip(axes.flat, panels, strict=False):
            _draw_map(ax, panel, 0.7 * side)
        _inner_axis_names_dropped(axes, panels)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig
