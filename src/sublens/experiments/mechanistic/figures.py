"""The mechanistic figures, drawn from the run directory alone (results.json, numbers.parquet and
mechanistic.safetensors: a run can be redrawn), in the paper style of `sublens.figures`:
residual similarity by layer, head and MLP contributions per category, attention from the final
position.

Each figure is drawn at the width the paper prints it at, so its fonts are the printed sizes:
the similarity profile, the contribution maps and the attention patterns across the page
(figure*), the attention to the tokens in one column. No figure the paper may print is taller
than the bundle's cap (0.45 of the text height), so none is shrunk on the page. Maps that are
compared side by side (one per category) share one colour scale."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from safetensors.numpy import load_file

from sublens.experiments.mechanistic.analysis import category_groups
from sublens.experiments.mechanistic.results import TABLE_FILE, TENSOR_FILE, MechanisticResults
from sublens.figures import DOUBLE_COLUMN_IN, PAPER_RC, SINGLE_COLUMN_IN, save_figure

Arrays = dict[str, np.ndarray]
SIMILARITY_WIDTH_IN = DOUBLE_COLUMN_IN
CONTRIBUTION_WIDTH_IN = DOUBLE_COLUMN_IN
ATTENTION_WIDTH_IN = SINGLE_COLUMN_IN
PATTERN_WIDTH_IN = DOUBLE_COLUMN_IN
MAX_HEIGHT_IN = 4.3  # the bundle caps a figure at 0.45 of the text height (4.4 in on A4)
TOKEN_IN = 0.12  # room for one token label of 7 pt on a pattern's axis
# the entanglement figures' colours, so a category looks the same throughout the paper
COLORS = {"increased": "C0", "decreased": "C1", "unchanged": "C2", "random": "C3"}


def make_figures(results: MechanisticResults, out: Path) -> list[str]:
    """Writes figures/{similarity_by_layer, head_contributions, attention_to_tokens} and, with
    heads to plot, figures/attention_patterns (.pdf, .png) into the run directory `out`; their
    paths relative to it. Needs the table and tensors there, and a finished results' measurements."""
    table = pd.read_parquet(out / TABLE_FILE)
    arrays = load_file(str(out / TENSOR_FILE))
    bias, control = results.words.bias.word.strip(), results.words.control.word.strip()
    heads = results.attention.plotted_heads if results.attention else []
    figures = {
        "similarity_by_layer": similarity_figure(table, arrays, bias, control),
        "head_contributions": contribution_figure(table, arrays, bias, control),
        "attention_to_tokens": attention_figure(arrays, bias),
    }
    if heads and results.prompts:
        first = results.prompts.attention[0]
        figures["attention_patterns"] = pattern_figure(arrays, heads, first.tokens, first.number)
    written = [path for stem, fig in figures.items() for path in save_figure(fig, out / "figures" / stem)]
    return [path.relative_to(out).as_posix() for path in written]


def _with_embedding(arrays: Arrays, key: str) -> np.ndarray:
    """[N, 1 + L]: the embedding's value in column 0, then one column per block."""
    return np.concatenate([arrays[f"{key}_embed"][:, None], arrays[key]], axis=1)


def _color(name: str) -> str:
    return COLORS.get(name, "black")


def similarity_figure(table: pd.DataFrame, arrays: Arrays, bias: str, control: str) -> Figure:
    """Cosine of each number's residual with the bias and the control statement's (on one scale),
    and their difference, per layer: mean and 95% CI (normal approximation over the numbers) per
    category."""
    cos_bias, cos_control = _with_embedding(arrays, "cos_bias"), _with_embedding(arrays, "cos_control")
    diff = cos_bias - cos_control
    x = np.arange(-1, diff.shape[1] - 1)
    series = [
        (cos_bias, f"cos(number, {bias})"),
        (cos_control, f"cos(number, {control})"),
        (diff, f"difference ({bias} − {control})"),
    ]
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(SIMILARITY_WIDTH_IN, 2.5), layout="constrained")
        axes = fig.subplots(1, 3, sharex=True)
        axes[1].sharey(axes[0])  # the two cosines are compared: one scale; the difference its own
        for ax, (values, title) in zip(axes, series, strict=True):
            for name, mask in category_groups(table):
                _mean_band(ax, x, values[mask], _color(name), f"{name} (n = {int(mask.sum())})")
            ax.set_title(title)
            ax.set_xlabel("layer (−1 = embedding)")
        axes[2].axhline(0, color="grey", lw=0.5)
        axes[0].set_ylabel("cosine similarity")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), frameon=False)
    return fig


def _mean_band(ax: Axes, x: np.ndarray, values: np.ndarray, color: str, label: str) -> None:
    mean = values.mean(axis=0)
    half = 1.96 * values.std(axis=0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else np.zeros_like(mean)
    ax.plot(x, mean, color=color, lw=1, label=label)
    ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2, lw=0)


def contribution_figure(table: pd.DataFrame, arrays: Arrays, bias: str, control: str) -> Figure:
    """Per category (columns) and layer (rows of each map): every head's and the MLP's (last
    column, M) contrastive score on the number statement (top) and direct logit attribution on
    the number-priming prompt (bottom), means over the category's numbers. One symmetric colour
    scale per row, so the categories compare directly."""
    groups = category_groups(table)
    score = _heads_and_mlp(arrays["head_score_contrastive"], arrays["mlp_score_contrastive"])  # [N, L, H+1]
    dla = _heads_and_mlp(arrays["dla_heads"], arrays["dla_mlp"])
    n_heads = score.shape[2] - 1
    rows = [
        (score, f"score on the number statement\n({bias} − {control})"),
        (dla, f"direct logit attribution\n({bias} − {control})"),
    ]
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(CONTRIBUTION_WIDTH_IN, MAX_HEIGHT_IN - 0.1), layout="constrained")
        axes = fig.subplots(2, len(groups), squeeze=False, sharex=True, sharey=True)
        for r, (values, label) in enumerate(rows):
            means = [values[mask].mean(axis=0) for _, mask in groups]
            limit = max(float(np.nanmax(np.abs(m))) for m in means) or 1.0
            images = [
                ax.imshow(mean, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
                for ax, mean in zip(axes[r], means, strict=True)
            ]
            for ax in axes[r]:
                ax.axvline(n_heads - 0.5, color="black", lw=0.8)  # heads | MLP
            fig.colorbar(images[0], ax=list(axes[r]), label=label, fraction=0.04, pad=0.02)
            axes[r][0].set_ylabel("layer")
        for ax, (name, mask) in zip(axes[0], groups, strict=True):
            ax.set_title(f"{name} (n = {int(mask.sum())})")
        for ax in axes[-1]:
            ax.set_xticks(_head_ticks(n_heads), [*(str(h) for h in _head_ticks(n_heads)[:-1]), "M"])
            ax.set_xlabel("head")
    return fig


def _heads_and_mlp(heads: np.ndarray, mlp: np.ndarray) -> np.ndarray:
    """[N, L, H] heads and [N, L] MLP as one [N, L, H + 1] grid, the MLP last."""
    return np.concatenate([heads, mlp[:, :, None]], axis=2)


def _head_ticks(n_heads: int) -> list[int]:
    """A few head positions (enough to count by), then the MLP column, with a gap before it."""
    step = max(1, math.ceil(n_heads / 4))
    return [h for h in range(0, n_heads - 1, step)] + [n_heads]


def attention_figure(arrays: Arrays, bias: str) -> Figure:
    """Attention from the final position to the number's tokens and to the bias word, per layer
    and head (mean over the attention prompts); each map has its own scale (the animal token
    draws several times the weight of the number)."""
    to_number, to_animal = arrays["attention_to_number"], arrays["attention_to_animal"]  # [P, L, H]
    n_layers = to_number.shape[1]
    height = min(MAX_HEIGHT_IN, max(2.4, 0.08 * n_layers + 1.4))
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(ATTENTION_WIDTH_IN, height), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, values, title in ((axes[0], to_number, "to the number"), (axes[1], to_animal, f"to '{bias}'")):
            image = ax.imshow(values.mean(0), aspect="auto", cmap="viridis", interpolation="nearest")
            bar = fig.colorbar(image, ax=ax, location="bottom", label="attention weight", aspect=12)
            bar.ax.xaxis.set_major_locator(MaxNLocator(nbins=3))  # labels of 7-8 pt side by side
            ax.set_title(title)
            ax.set_xlabel("head")
            ax.set_xticks(_head_ticks(values.shape[2] + 1)[:-1])
        axes[0].set_ylabel("layer")
    return fig


def pattern_figure(arrays: Arrays, heads: list[str], tokens: list[str], number: str) -> Figure:
    """The full attention pattern of the first attention prompt for each plotted head ('L3H2'),
    as many side by side as their token labels leave room for."""
    shown = [t.replace("\n", "\\n") for t in tokens]
    panel = max(1.2, TOKEN_IN * len(shown))
    columns = max(1, min(len(heads), int((PATTERN_WIDTH_IN - 1.0) // panel)))
    rows = math.ceil(len(heads) / columns)
    pattern = arrays["attention_pattern_0"]  # [L, H, q, k]
    with plt.rc_context(PAPER_RC):
        fig = Figure(figsize=(PATTERN_WIDTH_IN, rows * (panel + 0.3) + 0.8), layout="constrained")
        axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False))
        for i, label in enumerate(heads):
            ax = axes.flat[i]
            layer, head = (int(part) for part in label[1:].split("H"))
            ax.imshow(pattern[layer, head], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{label} ({number})")
            ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=7)
            ax.set_yticks(range(len(shown)), shown if i % columns == 0 else [], fontsize=7)
            ax.set_xlabel("key")
        for ax in axes.flat[len(heads) :]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("query")
    return fig
