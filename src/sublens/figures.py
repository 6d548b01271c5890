"""Figures for papers: vector PDFs with TrueType (Type 42) fonts, never Type 3, plus a PNG.

Every figure is drawn at the width it is printed at (one ACL column, `SINGLE_COLUMN_IN`, or the
full text width, `DOUBLE_COLUMN_IN`), so a font size set here is the printed size; the bundle
includes a figure at the column or text width. `print_problems` lists what a reader could not
read at that size (text under `MIN_FONT_PT`) or would read as a mistake (an empty panel); the
tests call it on every figure an experiment draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on the machines sublens runs on
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text

from sublens.runs import atomic_write_figure

PAPER_RC: Any = {
    "pdf.fonttype": 42,  # TrueType: ACL's checker rejects Type 3 fonts
    "ps.fonttype": 42,
    "font.family": "serif",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 150,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,  # the default 0.1 in widens a 6.3 in figure past the text width
}
SINGLE_COLUMN_IN = 3.0  # one ACL column (7.7 cm), a little under so nothing is scaled down
DOUBLE_COLUMN_IN = 6.3  # the ACL text width (16 cm)
COLUMN_WIDTH_IN = SINGLE_COLUMN_IN  # the old name
MIN_FONT_PT = 7.0  # the smallest text a printed figure may carry


def new_figure(width: float = SINGLE_COLUMN_IN, height: float = 2.2) -> tuple[Figure, object]:
    """A figure sized for one column, with the paper rc settings."""
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write `stem`.pdf and `stem`.png; returns both paths. Closes the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    with plt.rc_context(PAPER_RC):
        for path in paths:
            atomic_write_figure(fig, path)
    plt.close(fig)
    return paths


def print_problems(fig: Figure, width: float | None = None) -> list[str]:
    """What makes `fig` unreadable in print: text smaller than `MIN_FONT_PT`, a figure wider
    than the text (or than `width`, the width it is printed at), an axes with nothing drawn
    in it and not switched off. Empty when the figure is fit to print."""
    problems: list[str] = []
    limit = width if width is not None else DOUBLE_COLUMN_IN
    fig_width = float(fig.get_size_inches()[0])
    if fig_width > limit + 0.05:
        problems.append(
            f"figure is {fig_width:.2f} in wide; it is printed at {limit:.2f} in, so everything in it shrinks"
        )
    else:
        problems += [
            f"text {text.get_text()!r} is {float(text.get_fontsize()):.1f} pt (< {MIN_FONT_PT:g} pt)"
            for text in _visible_texts(fig)
            if float(text.get_fontsize()) < MIN_FONT_PT - 1e-9
        ]
    problems += [
        f"panel {i} ({ax.get_title() or 'untitled'}) is empty" for i, ax in enumerate(fig.axes) if _is_empty(ax)
    ]
    return problems + _overlapping_labels(fig)


def _overlapping_labels(fig: Figure) -> list[str]:
    """Panel titles that run into each other (titles too long for their panels) and x tick labels
    of one panel that run into each other (labels too wide for their spacing): each pair
    overlapping by more than a point. Needs a drawn figure (`fig.draw_without_rendering()`),
    since tick labels exist only once drawn."""
    titles = [ax.title for ax in fig.axes if ax.title.get_visible() and ax.title.get_text()]
    groups = [titles] + [_shown_xticklabels(ax) for ax in fig.axes]
    overlap_px = fig.dpi / 72  # one point
    found: list[str] = []
    for labels in groups:
        boxes = [(t, t.get_window_extent()) for t in labels]
        for i, (a, box_a) in enumerate(boxes):
            for b, box_b in boxes[i + 1 :]:
                width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
                height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
                if width > overlap_px and height > overlap_px:
                    found.append(f"{a.get_text()!r} runs into {b.get_text()!r}")
    return found


def _shown_xticklabels(ax: Axes) -> list[Text]:
    """The x tick labels drawn: visible, non-empty, at a tick inside the view limits, and upright
    or vertical (a slanted label's box is far larger than its text, so boxes would overlap
    where the text does not)."""
    low, high = sorted(ax.get_xlim())
    return [
        label
        for tick, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=False)
        if ax.get_visible()
        and label.get_visible()
        and label.get_text()
        and low <= tick <= high
        and label.get_rotation() % 90 == 0
    ]


def _visible_texts(fig: Figure) -> list[Text]:
    texts = [t for t in fig.findobj(Text) if isinstance(t, Text)]
    return [t for t in texts if t.get_visible() and t.get_text().strip() and t.figure is fig]


def _is_empty(ax: Axes) -> bool:
    if not ax.axison or not ax.get_visible():
        return False  # switched off on purpose (a legend or note panel)
    drawn = [*ax.lines, *ax.patches, *ax.collections, *ax.images, *ax.texts, *ax.tables]
    return not [a for a in drawn if a.get_visible()]
