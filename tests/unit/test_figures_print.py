"""The figures of the entanglement, pruning, hybrid and mechanistic experiments at print size.

Every figure is built from the recorded runs in tests/data/runs (the mechanistic arrays and the
entanglement per-number table, which the run folders do not keep, from small synthetic inputs of
the recorded shapes) and must pass `sublens.figures.print_problems` at the width the paper prints
it at: no text under 7 pt, not wider than its column or the page, no empty panel. The width is
the section's choice (a `figure*` across the page or a `figure` in a column), so the tests also
redraw each run's figures into a copy of its folder and check the section includes every one at
the width it was drawn at, and no taller than the bundle's cap (which would shrink it).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from safetensors.numpy import save_file

from fixture_runs import RUNS
from sublens.experiments.entanglement import figures as ent_figures
from sublens.experiments.entanglement.results import EntanglementResults
from sublens.experiments.hybrid import figures as hybrid_figures
from sublens.experiments.hybrid.results import HybridResults
from sublens.experiments.mechanistic import figures as mech_figures
from sublens.experiments.mechanistic.results import TABLE_FILE, TENSOR_FILE, MechanisticResults
from sublens.experiments.pruning import figures as pruning_figures
from sublens.experiments.pruning.panels import drawn_panels
from sublens.experiments.pruning.results import PruningResults
from sublens.figures import DOUBLE_COLUMN_IN, PAPER_RC, SINGLE_COLUMN_IN, print_problems
from sublens.report.sections import builder
from sublens.report.sections import hybrid as hybrid_section
from sublens.report.sections import pruning as pruning_section
from sublens.report.stages import load_stage
from sublens.runs import read_json

A4_TEXT_HEIGHT_IN = 24.7 / 2.54  # sublens-acl: A4 with 2.5 cm margins
HEIGHT_CAP_IN = 0.45 * A4_TEXT_HEIGHT_IN  # the bundle includes figures with height=0.45\textheight
# savefig's tight bounding box adds this margin on every side of the drawn figure (PAPER_RC leaves
# it at matplotlib's default); the saved page is that much larger than the figure drawn
SAVE_PAD_IN = float(PAPER_RC.get("savefig.pad_inches", plt.rcParamsDefault["savefig.pad_inches"]))


# ---- the recorded runs and synthetic inputs of their shapes ----------------------------------
@cache
def _results(name: str) -> dict[str, Any]:
    return read_json(RUNS / name / "results.json")


def _entanglement() -> EntanglementResults:
    return EntanglementResults.model_validate(_results("entanglement"))


def _numbers(results: EntanglementResults) -> pd.DataFrame:
    """numbers.parquet's columns the figure reads: each categorised number of each set with a
    ratio scattered around its category's recorded geometric mean."""
    rng = np.random.default_rng(0)
    rows = []
    for name, categories in results.categories.items():
        stats = (results.category_stats or {})[name]
        for category in ("increased", "decreased", "unchanged", "random"):
            group = getattr(stats, category)
            for number in getattr(categories, category):
                rows.append(
                    {
                        "set": name,
                        "category": category,
                        "number": number,
                        "bias_ratio": group.bias_ratio.geo_mean * rng.lognormal(0, 0.2),
                        "relative_ratio": group.relative_ratio.geo_mean * rng.lognormal(0, 0.2),
                    }
                )
    return pd.DataFrame(rows)


def _mechanistic() -> MechanisticResults:
    return MechanisticResults.model_validate(_results("mechanistic"))


def _mechanistic_inputs(results: MechanisticResults) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The per-number table and the tensors (mechanistic.safetensors) of the recorded run's
    shapes: its numbers and categories, its layers and heads, its attention prompt's tokens."""
    assert results.model is not None and results.prompts is not None and results.numbers is not None
    n_layers, n_heads = results.model.n_layers, results.model.n_heads
    table = pd.DataFrame(
        {"number": [n.number for n in results.numbers], "category": [n.category for n in results.numbers]}
    )
    n, prompts = len(table), len(results.prompts.attention)
    tokens = len(results.prompts.attention[0].tokens)
    rng = np.random.default_rng(0)

    def uniform(*shape: int, high: float = 1.0) -> np.ndarray:
        return rng.uniform(0, high, shape).astype(np.float32)

    def normal(*shape: int, sd: float = 1.0) -> np.ndarray:
        return rng.normal(0, sd, shape).astype(np.float32)

    arrays = {
        "cos_bias": uniform(n, n_layers),
        "cos_control": uniform(n, n_layers),
        "cos_bias_embed": uniform(n, high=0.1),
        "cos_control_embed": uniform(n, high=0.1),
        "head_score_contrastive": normal(n, n_layers, n_heads),
        "mlp_score_contrastive": normal(n, n_layers, sd=3),
        "dla_heads": normal(n, n_layers, n_heads, sd=0.1),
        "dla_mlp": normal(n, n_layers, sd=0.3),
        "attention_to_number": uniform(prompts, n_layers, n_heads, high=0.2),
        "attention_to_animal": uniform(prompts, n_layers, n_heads, high=0.8),
        "attention_pattern_0": rng.dirichlet(np.ones(tokens), (n_layers, n_heads, tokens)).astype(np.float32),
    }
    return table, arrays


def _figures() -> dict[str, tuple[Callable[[], Figure], float]]:
    """figure id -> (its builder, the width it is drawn for)."""
    ent = _entanglement()
    pruning = PruningResults.model_validate(_results("pruning"))
    hybrid = HybridResults.model_validate(_results("hybrid"))
    mech = _mechanistic()
    table, arrays = _mechanistic_inputs(mech)
    first = mech.prompts.attention[0] if mech.prompts is not None else None
    heads = mech.attention.plotted_heads if mech.attention is not None else []
    assert first is not None and heads
    return {
        "entanglement/bias_ratio_by_category": (
            lambda: ent_figures.category_figure(ent, _numbers(ent)),
            ent_figures.CATEGORY_WIDTH_IN,
        ),
        "entanglement/bias_ratio_by_length": (lambda: ent_figures.length_figure(ent), ent_figures.LENGTH_WIDTH_IN),
        "pruning/pruning_retention": (lambda: pruning_figures.sweep_figure(pruning), pruning_figures.SWEEP_WIDTH_IN),
        "pruning/pruning_entropy_heatmap": (
            lambda: pruning_figures.heatmap_figure(pruning),
            pruning_figures.HEATMAP_WIDTH_IN,
        ),
        "hybrid/hybrid_heatmap": (
            lambda: hybrid_figures.heatmap_figure(hybrid, ["into_base", "into_biased"]),
            hybrid_figures.WIDTH_IN,
        ),
        "mechanistic/similarity_by_layer": (
            lambda: mech_figures.similarity_figure(table, arrays, "owl", "dog"),
            mech_figures.SIMILARITY_WIDTH_IN,
        ),
        "mechanistic/head_contributions": (
            lambda: mech_figures.contribution_figure(table, arrays, "owl", "dog"),
            mech_figures.CONTRIBUTION_WIDTH_IN,
        ),
        "mechanistic/attention_to_tokens": (
            lambda: mech_figures.attention_figure(arrays, "owl"),
            mech_figures.ATTENTION_WIDTH_IN,
        ),
        "mechanistic/attention_patterns": (
            lambda: mech_figures.pattern_figure(arrays, heads, first.tokens, first.number),
            mech_figures.PATTERN_WIDTH_IN,
        ),
    }


def _drawn(fig: Figure) -> Figure:
    """Lay the figure out as saving does (the tick labels exist only once drawn)."""
    with plt.rc_context(PAPER_RC):
        fig.draw_without_rendering()
    return fig


# ---- every figure, at its print width ---------------------------------------------------------
@pytest.mark.parametrize("name", list(_figures()))
def test_every_figure_is_fit_to_print(name: str) -> None:
    build, width = _figures()[name]
    assert width in (SINGLE_COLUMN_IN, DOUBLE_COLUMN_IN)
    fig = _drawn(build())
    assert print_problems(fig, width) == []
    assert float(fig.get_size_inches()[0]) == pytest.approx(width)  # drawn at its print width, not shrunk to it


def _page_inches(pdf: Path) -> tuple[float, float]:
    box = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)", pdf.read_bytes())
    assert box is not None, pdf
    x0, y0, x1, y1 = (float(v) for v in box.groups())
    return (x1 - x0) / 72, (y1 - y0) / 72


def _redrawn(name: str, folder: Path) -> Path:
    """A copy of the recorded run with its figures drawn by the current code (and, where the
    figures need them, the per-number table and tensors the recorded folder does not keep)."""
    run = folder / name
    shutil.copytree(RUNS / name, run)
    for old in [*run.glob("figures/*"), *run.glob("*.pdf"), *run.glob("*.png")]:
        old.unlink()
    if name == "entanglement":
        ent = _entanglement()
        ent_figures.make_figures(ent, _numbers(ent), run)
    elif name == "pruning":
        pruning_figures.make_figures(PruningResults.model_validate(_results(name)), run)
    elif name == "hybrid":
        hybrid_figures.make_figures(HybridResults.model_validate(_results(name)), ["into_base", "into_biased"], run)
    else:
        mech = _mechanistic()
        table, arrays = _mechanistic_inputs(mech)
        table.to_parquet(run / TABLE_FILE)
        save_file(arrays, str(run / TENSOR_FILE))
        mech_figures.make_figures(mech, run)
    return run


@pytest.mark.parametrize("name", ["entanglement", "pruning", "hybrid", "mechanistic"])
def test_the_section_prints_each_figure_at_the_width_it_is_drawn_at(name: str, tmp_path: Path) -> None:
    run = load_stage(_redrawn(name, tmp_path))
    make = builder(name)
    assert make is not None
    shown = make(run).figures
    assert shown, f"{name}: the section shows no figure"
    widths = {key.split("/")[1]: width for key, (_, width) in _figures().items() if key.startswith(name)}
    for figure in shown:
        printed = DOUBLE_COLUMN_IN if figure.wide else SINGLE_COLUMN_IN
        assert widths[figure.stem] == printed, (
            f"{figure.stem} is drawn {widths[figure.stem]} in wide, printed {printed}"
        )
        page_width, page_height = _page_inches(run.figures()[figure.stem])
        assert page_width <= printed + 2 * SAVE_PAD_IN + 0.02, figure.stem  # nothing beyond the save margin
        assert page_height <= HEIGHT_CAP_IN + 2 * SAVE_PAD_IN, (
            f"{figure.stem}: {page_height:.2f} in tall, shrunk by the height cap"
        )
    if name == "mechanistic":  # drawn for the page, the contribution maps are shown (not the fallback)
        assert [f.stem for f in shown] == ["similarity_by_layer", "head_contributions"]


# ---- the defects a reviewer found ------------------------------------------------------------
def test_an_undefined_answer_rate_gets_no_panel_and_the_caption_says_why() -> None:
    """A run whose unpruned model never named the owl in its sampled answers: the answer-rate
    retention is undefined in every cell, so the figure has three panels, none empty."""
    raw = copy.deepcopy(_results("pruning"))
    for step in raw["steps"]:
        step["retention"]["answer_rate"].update(
            ratio=None, ci_low=None, ci_high=None, note="the unpruned model never named the trait"
        )
    results = PruningResults.model_validate(raw)
    assert drawn_panels(results) == ["p_trait", "panel_share", "perplexity"]
    fig = _drawn(pruning_figures.sweep_figure(results))
    assert len(fig.axes) == 3 and print_problems(fig, pruning_figures.SWEEP_WIDTH_IN) == []
    caption = pruning_section.sweep_caption(results)
    assert "The answer-rate retention is not drawn: it is undefined, since the unpruned model never named" in caption
    assert "answer rate linear" not in caption and "triangle" not in caption


def test_weight_changes_print_two_significant_digits() -> None:
    """2.0 beside 2.1, not 2 beside 2.1: the weight panel's cells all show two digits."""
    raw = copy.deepcopy(_results("hybrid"))
    raw["weight_change"]["attention"]["relative_l2"]["all"] = 2.0e-3
    raw["weight_change"]["mlp"]["relative_l2"]["all"] = 2.1e-3
    raw["weight_change"]["embeddings"]["relative_l2"]["all"] = 4.9e-3
    fig = _drawn(hybrid_figures.heatmap_figure(HybridResults.model_validate(raw), ["into_base", "into_biased"]))
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"2.0", "2.1", "4.9"} <= texts and "2" not in texts


def test_off_scale_hybrid_cells_are_hatched_and_explained() -> None:
    """A fraction beyond either model (here 1.31 and -0.12) takes no warning colour: its cell is
    hatched, its value printed, and the caption says what the hatching means."""
    raw = copy.deepcopy(_results("hybrid"))
    raw["hybrids"]["base+biased.mlp[20:30]"]["bias_fraction"] = 1.31
    raw["hybrids"]["base+biased.attention[0:10]"]["bias_fraction"] = -0.12
    results = HybridResults.model_validate(raw)
    fig = _drawn(hybrid_figures.heatmap_figure(results, ["into_base", "into_biased"]))
    assert print_problems(fig, hybrid_figures.WIDTH_IN) == []
    hatched = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 2
    assert {t.get_text() for t in fig.axes[0].texts} >= {"1.31", "\u22120.12"}
    run = dataclasses.replace(load_stage(RUNS / "hybrid"), results=raw)
    assert "hatched: a fraction outside 0..1" in hybrid_section.heatmap_caption(
        run, results, hybrid_section.cells(results)
    )
    recorded = HybridResults.model_validate(_results("hybrid"))  # every fraction on the scale
    assert "hatched" not in hybrid_section.heatmap_caption(run, recorded, hybrid_section.cells(recorded))
