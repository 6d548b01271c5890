"""The mechanistic figures, drawn from the run directory alone (results.json, numbers.parquet and
mechanistic.safetensors: a run can be redrawn), in the paper style of `sublens.figures`:
residual similarity by layer, head and MLP contributions per category, attention from the final
position."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from safetensors.numpy import load_file

from sublens.experiments.mechanistic.analysis import category_groups
from sublens.experiments.mechanistic.results import TABLE_FILE, TENSOR_FILE, MechanisticResults
from sublens.figures import PAPER_RC, save_figure

Arrays = dict[str, np.ndarray]


def make_figures(results: MechanisticResults, out: Path) -> list[str]:
    """Writes figures/{similarity_by_layer, head_contributions, attention_to_tokens} and, with
    heads to plot, figures/attention_patterns (.pdf, .png) into the run directory `out`; their
    paths relative to it. Needs the table and tensors there, and a finished results' measurements."""
    table = pd.read_parquet(out / TABLE_FILE)
    arrays = load_file(str(out / TENSOR_FILE))
    bias, control = results.words.bias.word.strip(), results.words.control.word.strip()
    heads = results.attention.plotted_heads if results.attention else []
    written: list[Path] = []
    with plt.rc_context(PAPER_RC):
        written += save_figure(similarity_figure(table, arrays, bias, control), out / "figures" / "similarity_by_layer")
        written += save_figure(contribution_figure(table, arrays, bias, control), out / "figures" / "head_contributions")
        written += save_figure(attention_figure(arrays, bias), out / "figures" / "attention_to_tokens")
        if heads and results.prompts:
            first = results.prompts.attention[0]
            written += save_figure(pattern_figure(arrays, heads, first.tokens, first.number),
                                   out / "figures" / "attention_patterns")
    return [path.relative_to(out).as_posix() for path in written]


def _with_embedding(arrays: Arrays, key: str) -> np.ndarray:
    """[N, 1 + L]: the embedding's value in column 0, then one column per block."""
    return np.concatenate([arrays[f"{key}_embed"][:, None], arrays[key]], axis=1)


def similarity_figure(table: pd.DataFrame, arrays: Arrays, bias: str, control: str) -> Figure:
    """Cosine of each number's residual with the bias and the control statement's, and their
    difference, per layer: mean and 95% CI per category."""
    cos_bias, cos_control = _with_embedding(arrays, "cos_bias"), _with_embedding(arrays, "cos_control")
    diff = cos_bias - cos_control
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3, sharex=True)
    x = np.arange(-1, diff.shape[1] - 1)
    series = [
        (cos_bias, f"cos(number, {bias})"),
        (cos_control, f"cos(number, {control})"),
        (diff, f"difference ({bias} − {control})"),
    ]
    for ax, (values, title) in zip(axes, series, strict=True):
        for name, mask in category_groups(table):
            v = values[mask]
            mean = v.mean(axis=0)
            half = (1.96 * v.std(axis=0, ddof=1) / math.sqrt(len(v)) if len(v) > 1
                    else np.zeros_like(mean))
            ax.plot(x, mean, label=f"{name} (n={len(v)})")
            ax.fill_between(x, mean - half, mean + half, alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (−1 = embedding)")
    axes[2].axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("cosine similarity (mean, 95% CI)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _heatmap(ax: Any, fig: Figure, values: np.ndarray, title: str, diverging: bool,
             bar: float = 0.046) -> None:
    if diverging:
        limit = float(np.nanmax(np.abs(values))) or 1.0
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                          interpolation="nearest")
    else:
        image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, fraction=bar)


def contribution_figure(table: pd.DataFrame, arrays: Arrays, bias: str, control: str) -> Figure:
    """Per category (rows) and layer: the heads' and MLP's contrastive scores on the number
    statement, and their direct logit attribution on the number-priming prompt."""
    groups = category_groups(table)
    head_score = arrays["head_score_contrastive"]  # [N, L, H]
    mlp_score = arrays["mlp_score_contrastive"]  # [N, L]
    n_layers, H = head_score.shape[1], head_score.shape[2]
    fig = Figure(figsize=(10, 0.18 * n_layers * len(groups) + 2))
    axes = fig.subplots(len(groups), 3, squeeze=False, gridspec_kw={"width_ratios": [H + 1, H, 2]})
    dla_heads, dla_mlp = arrays["dla_heads"], arrays["dla_mlp"]
    for row, (name, mask) in enumerate(groups):
        grid = np.concatenate([head_score[mask].mean(0), mlp_score[mask].mean(0)[:, None]], axis=1)
        _heatmap(axes[row, 0], fig, grid, f"{name}: score on the number statement ({bias} − {control})", True)
        _heatmap(axes[row, 1], fig, dla_heads[mask].mean(0), f"{name}: heads' DLA to logit {bias} − {control}",
                 True)
        _heatmap(axes[row, 2], fig, dla_mlp[mask].mean(0)[:, None], "MLP DLA", True, bar=0.6)
        axes[row, 0].set_xticks(range(H + 1), [*(str(h) for h in range(H)), "MLP"], fontsize=7)
        axes[row, 0].axvline(H - 0.5, color="black", lw=1)
        axes[row, 1].set_xticks(range(H), [str(h) for h in range(H)], fontsize=7)
        axes[row, 2].set_xticks([])
    axes[-1, 0].set_xlabel("head")
    axes[-1, 1].set_xlabel("head")
    fig.tight_layout()
    return fig


def attention_figure(arrays: Arrays, bias: str) -> Figure:
    """Attention from the final position to the number's tokens and to the bias word, per layer
    and head (mean over the attention prompts)."""
    to_number, to_animal = arrays["attention_to_number"], arrays["attention_to_animal"]  # [P, L, H]
    fig = Figure(figsize=(9, 0.18 * to_number.shape[1] + 1.5))
    axes = fig.subplots(1, 2)
    n = to_number.shape[0]
    _heatmap(axes[0], fig, to_number.mean(0), f"final position → number (mean of {n} prompts)", False)
    _heatmap(axes[1], fig, to_animal.mean(0), f"final position → '{bias}'", False)
    for ax in axes:
        ax.set_xlabel("head")
    fig.tight_layout()
    return fig


def pattern_figure(arrays: Arrays, heads: list[str], tokens: list[str], number: str) -> Figure:
    """The full attention pattern of the first attention prompt for each plotted head ('L3H2')."""
    shown = [t.replace("\n", "\\n") for t in tokens]
    size = max(3.0, 0.22 * len(shown))
    fig = Figure(figsize=(size * len(heads), size + 0.6))
    axes = np.atleast_1d(fig.subplots(1, len(heads)))
    pattern = arrays["attention_pattern_0"]  # [L, H, q, k]
    for ax, label in zip(axes, heads, strict=True):
        layer, head = (int(part) for part in label[1:].split("H"))
        ax.imshow(pattern[layer, head], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{label}  ({number})", fontsize=9)
        ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=6)
        ax.set_yticks(range(len(shown)), shown, fontsize=6)
        ax.set_xlabel("key")
    axes[0].set_ylabel("query")
    fig.tight_layout()
    return fig
