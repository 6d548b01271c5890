"""The print-size rules every paper figure is checked against (sublens.figures.print_problems)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from sublens.figures import (
    DOUBLE_COLUMN_IN,
    MIN_FONT_PT,
    SINGLE_COLUMN_IN,
    new_figure,
    print_problems,
)


def test_a_column_figure_with_a_curve_passes() -> None:
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 2])
    ax.set_xlabel("step")
    assert print_problems(fig, SINGLE_COLUMN_IN) == []
    plt.close(fig)


def test_small_text_wide_figures_and_empty_panels_are_named() -> None:
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 2])
    ax.set_title("tiny", fontsize=MIN_FONT_PT - 1)
    assert print_problems(fig) == [f"text 'tiny' is {MIN_FONT_PT - 1:.1f} pt (< {MIN_FONT_PT:g} pt)"]
    plt.close(fig)

    wide, axes = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN_IN * 2, 2))
    axes[0].plot([0, 1], [0, 1])
    problems = print_problems(wide)
    assert problems[0].startswith("figure is 12.60 in wide") and problems[1] == "panel 1 (untitled) is empty"
    plt.close(wide)


def test_a_panel_switched_off_on_purpose_is_not_empty() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN_IN, 2))
    axes[0].plot([0, 1], [0, 1])
    axes[1].axis("off")
    assert print_problems(fig) == []
    plt.close(fig)


def test_titles_and_tick_labels_that_run_into_each_other_are_named() -> None:
    """The defect the demo's entanglement figure had: five panels across 6.3 in with long titles
    and four horizontal category labels each. Short two-line titles and upright labels fix it."""
    fig, axes = plt.subplots(1, 5, figsize=(DOUBLE_COLUMN_IN, 2), layout="constrained")
    for ax in axes:
        ax.plot([0, 3], [1, 2])
        ax.set_title("a long title for a narrow panel (k = 15)")
        ax.set_xticks(range(4), ["Inc.", "Dec.", "Unch.", "Rand."])
    fig.draw_without_rendering()
    problems = print_problems(fig)
    assert any("runs into 'a long title" in p for p in problems)
    assert any("'Dec.' runs into 'Unch.'" in p for p in problems)
    for ax in axes:
        ax.set_title("2-digit\nk = 15")
        ax.set_xticks(range(4), ["Inc.", "Dec.", "Unch.", "Rand."], rotation=90)
    fig.draw_without_rendering()
    assert print_problems(fig) == []
    plt.close(fig)
