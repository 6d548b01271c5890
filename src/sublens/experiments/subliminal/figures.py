"""The subliminal figures, drawn from the results alone (a run directory can be redrawn), at the
width they are printed at (`sublens.figures`):

- ``preference`` (text width): owl's panel share of the base model and the teacher, on an axis
  of their own (the prompted teacher's share is tens of times the students', and on one axis
  it flattens their differences); every student arm's share, with the base model's as a line;
  and each arm's share over its matched control student (log scale);
- ``training_loss`` (one column): every student's answer-token loss per optimizer step.

Every marker is in the legend; the caption the report section writes says the same in words.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from sublens.experiments.subliminal.config import CONTROL, OWL
from sublens.experiments.subliminal.results import HeadlineRow, Level, SeedRatio, SubliminalResults
from sublens.figures import DOUBLE_COLUMN_IN, PAPER_RC, SINGLE_COLUMN_IN, new_figure, save_figure

PREFERENCE_HEIGHT_IN = 2.7
LOSS_HEIGHT_IN = 2.2
SEED_COLOR = "0.55"  # one training seed's value: a small grey dot
SEED_OFFSET = 0.18  # per-seed dots sit right of the mean they belong to
REFERENCE_COLOR = "black"
# Students are coloured by the data they learned from.
OWL_COLOR, CONTROL_COLOR, OTHER_COLOR = "tab:orange", "tab:blue", "tab:green"


def make_figures(results: SubliminalResults, folder: Path) -> list[Path]:
    """Writes preference and training_loss (.pdf, .png) into `folder`; the paths written."""
    written: list[Path] = []
    if results.headline:
        written += save_figure(preference_figure(results), folder / "preference")
    if results.students:
        written += save_figure(training_loss_figure(results), folder / "training_loss")
    return written


def dataset_color(dataset: str | None) -> str:
    """A student's colour by its data: owl (and the owl data filtered), control, another teacher's."""
    if dataset == CONTROL:
        return CONTROL_COLOR
    if dataset is not None and dataset.startswith(OWL):
        return OWL_COLOR
    return OTHER_COLOR


def shows_seeds(results: SubliminalResults) -> bool:
    """Single seeds are drawn (and explained) only with more than one: with one, the dot would
    sit on the mean."""
    return results.n_seeds > 1


# ---- preference -------------------------------------------------------------------------------
def preference_figure(results: SubliminalResults) -> Figure:
    """Three panels: the references' share, the students' share, the students over control."""
    rows = results.headline or []
    references = [r for r in rows if r.dataset is None]
    students = [r for r in rows if r.dataset is not None]
    compared = [r for r in students if r.vs_control is not None]
    with plt.rc_context(PAPER_RC):
        fig, (ref_ax, student_ax, ratio_ax) = plt.subplots(
            1,
            3,
            figsize=(DOUBLE_COLUMN_IN, PREFERENCE_HEIGHT_IN),
            gridspec_kw={"width_ratios": [max(1, len(references)), max(2, len(students)), max(2, len(compared))]},
        )
        trait = results.trait
        _reference_panel(ref_ax, references, trait)
        _student_panel(student_ax, students, references, trait, shows_seeds(results))
        _ratio_panel(ratio_ax, compared, shows_seeds(results))
        fig.legend(
            handles=_preference_legend(results, students),
            loc="lower center",
            ncol=3,
            frameon=False,
            bbox_to_anchor=(0.5, 1.0),
        )
        fig.tight_layout()
    return fig


def _interval(level: Level | SeedRatio) -> tuple[float, float, float]:
    """Value, CI low and CI high; a missing or NaN bound is the value (no bar on that side)."""
    value = level.mean if isinstance(level, Level) else level.ratio
    low = level.ci_low if level.ci_low is not None and math.isfinite(level.ci_low) else value
    high = level.ci_high if level.ci_high is not None and math.isfinite(level.ci_high) else value
    return value, low, high


def _mean_with_ci(ax: Axes, x: float, level: Level | SeedRatio, color: str) -> None:
    value, low, high = _interval(level)
    ax.errorbar([x], [value], yerr=[[value - low], [high - value]], fmt="o", ms=4, capsize=2.5, color=color)


def _seeds(ax: Axes, x: float, values: list[float] | None, show: bool) -> None:
    if show and values:
        ax.plot([x + SEED_OFFSET] * len(values), values, ".", color=SEED_COLOR, ms=4)


def _labelled(ax: Axes, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_xlim(-0.6, len(labels) - 0.4)


def _empty(ax: Axes, why: str) -> None:
    """A panel with nothing to draw says why (rather than standing empty)."""
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])


def _reference_panel(ax: Axes, references: list[HeadlineRow], trait: str) -> None:
    if not references:
        _empty(ax, "not measured")
    for i, row in enumerate(references):
        _mean_with_ci(ax, i, row.panel_share, REFERENCE_COLOR)
    _labelled(ax, ["base model" if r.model == "base" else r.model for r in references])
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"{trait}'s share of the panel")
    ax.set_title("References")


def _student_panel(
    ax: Axes, students: list[HeadlineRow], references: list[HeadlineRow], trait: str, seeds: bool
) -> None:
    base = next((r for r in references if r.model == "base"), None)
    if base is not None:
        ax.axhline(base.panel_share.mean, color=REFERENCE_COLOR, lw=0.8, ls="--")
    if not students:
        _empty(ax, "no student measured")
    for i, row in enumerate(students):
        _mean_with_ci(ax, i, row.panel_share, dataset_color(row.dataset))
        _seeds(ax, i, row.panel_share.per_seed, seeds)
    _labelled(ax, [r.model for r in students])
    ax.set_ylabel(f"{trait}'s share of the panel")
    ax.set_title("Students")


def _ratio_panel(ax: Axes, compared: list[HeadlineRow], seeds: bool) -> None:
    ax.axhline(1.0, color=REFERENCE_COLOR, lw=0.8, ls=":")
    if not compared:
        _empty(ax, "no matched comparison")
    for i, row in enumerate(compared):
        assert row.vs_control is not None
        ratio = row.vs_control.share_ratio
        _mean_with_ci(ax, i, ratio, dataset_color(row.dataset))
        _seeds(ax, i, ratio.per_seed, seeds)
    ax.set_yscale("log")
    _ratio_ticks(ax)
    _labelled(ax, [r.model for r in compared])
    ax.set_ylabel("share / matched control")
    ax.set_title("Over the control student")


# Ratios a reader names: on a log axis these are where the labels go (the decade ticks alone
# would often leave a panel of ratios near 1 with one label).
RATIO_TICKS = (0.1, 0.2, 0.25, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0)
MAX_RATIO_TICKS = 7


def _ratio_ticks(ax: Axes) -> None:
    low, high = ax.get_ylim()
    ticks = [t for t in RATIO_TICKS if low <= t <= high]
    step = max(1, math.ceil(len(ticks) / MAX_RATIO_TICKS))
    start = ticks.index(1.0) % step if 1.0 in ticks else 0  # thinned, 1 keeps its label
    shown = ticks[start::step]
    ax.set_yticks(shown, [f"{t:g}" for t in shown])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(low, high)


def _preference_legend(results: SubliminalResults, students: list[HeadlineRow]) -> list[Line2D]:
    """One entry per kind of marker and line drawn."""

    def mean_ci(color: str, label: str) -> Line2D:
        return Line2D([], [], color=color, marker="o", ms=4, ls="-", lw=1.0, label=label)

    handles = [mean_ci(REFERENCE_COLOR, "base model, teacher (mean, 95% CI)")]
    datasets = {r.dataset for r in students}
    if CONTROL in datasets:
        handles.append(mean_ci(CONTROL_COLOR, "control students"))
    if any(d is not None and d.startswith(OWL) for d in datasets):
        handles.append(mean_ci(OWL_COLOR, f"students of the {results.trait} teacher"))
    if any(dataset_color(d) == OTHER_COLOR for d in datasets):
        handles.append(mean_ci(OTHER_COLOR, "students of other teachers"))
    if shows_seeds(results):
        handles.append(Line2D([], [], color=SEED_COLOR, marker=".", ms=4, ls="none", label="one training seed"))
    handles.append(Line2D([], [], color=REFERENCE_COLOR, lw=0.8, ls="--", label="base model"))
    handles.append(Line2D([], [], color=REFERENCE_COLOR, lw=0.8, ls=":", label="no change (×1)"))
    return handles


# ---- training loss ----------------------------------------------------------------------------
LINESTYLES = {OWL: "-", CONTROL: "--"}  # any other data set: dotted


def training_loss_figure(results: SubliminalResults) -> Figure:
    """Every student's answer-token loss against the optimizer step: colour by trainable set,
    line style by data set, one legend entry per arm (its seeds share it)."""
    with plt.rc_context(PAPER_RC):
        fig, ax = new_figure(SINGLE_COLUMN_IN, LOSS_HEIGHT_IN)
        assert isinstance(ax, Axes)
        modes = list(dict.fromkeys(s.mode for s in (results.students or {}).values()))
        colors = {mode: f"C{i % 10}" for i, mode in enumerate(modes)}
        labelled: set[str] = set()
        for student in (results.students or {}).values():
            curve = student.training.loss_curve
            if not curve:
                continue
            arm = f"{student.dataset}-{student.mode}"
            ax.plot(
                [step for step, _ in curve],
                [loss for _, loss in curve],
                lw=0.8,
                color=colors[student.mode],
                ls=LINESTYLES.get(student.dataset, ":"),
                label=None if arm in labelled else arm,
            )
            labelled.add(arm)
        if not labelled:
            _empty(ax, "no loss logged")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("answer-token loss (nats)")
        ax.set_title("Student training loss")
        if labelled:
            fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
        fig.tight_layout()
    return fig
