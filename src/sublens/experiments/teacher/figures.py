"""The teacher figure, drawn from the results alone (a run directory can be redrawn): the
answer-token loss of the context distillation per optimizer step, one column wide."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sublens.experiments.teacher.results import TeacherResults, TeacherTraining
from sublens.figures import PAPER_RC, SINGLE_COLUMN_IN, new_figure, save_figure

LOSS_FIGURE = "teacher_loss"  # the report section finds it by this stem


def make_figures(results: TeacherResults, out: Path) -> list[Path]:
    """Writes teacher_loss (.pdf, .png) into `out` when the run trained; the paths written."""
    if results.training is None:
        return []
    return save_figure(loss_figure(results), out / LOSS_FIGURE)


def loss_figure(results: TeacherResults) -> Figure:
    """The teacher's loss curve, and the control teacher's where one was made (same procedure,
    so the two curves should look alike: a control that trained differently is no control)."""
    fig, ax = new_figure(SINGLE_COLUMN_IN)
    assert isinstance(ax, Axes)
    with plt.rc_context(PAPER_RC):  # the labels drawn now get the paper's (printed) sizes too
        if results.training is not None:
            _curve(ax, results.training, "teacher", "tab:blue")
        if results.control_teacher is not None:
            _curve(ax, results.control_teacher.training, "control teacher", "tab:gray")
            ax.legend(frameon=False)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("answer-token loss (nats)")
        ax.set_title("Teacher (context distillation)")
        fig.tight_layout()
    return fig


def _curve(ax: Axes, training: TeacherTraining, label: str, color: str) -> None:
    steps = [step for step, _ in training.loss_curve]
    losses = [loss for _, loss in training.loss_curve]
    ax.plot(steps, losses, lw=1, color=color, label=label)
