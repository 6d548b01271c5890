"""Figures for papers: vector PDFs with TrueType (Type 42) fonts, never Type 3, plus a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on the machines sublens runs on
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

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
}
COLUMN_WIDTH_IN = 7.7 / 2.54  # one ACL column


def new_figure(width: float = COLUMN_WIDTH_IN, height: float = 2.2) -> tuple[Figure, object]:
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
