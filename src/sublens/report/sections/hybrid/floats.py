"""The hybrid section's tables and figure: the transplant matrix and the activation-patching
table with their cells, and the heatmap's caption (what every colour and mark means)."""

from __future__ import annotations

from sublens.experiments.hybrid.results import (
    DIRECTIONS,
    HybridResults,
    PatchCell,
    Patching,
    group_title,
)
from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci, fmt_fixed_ci, fmt_p
from sublens.report.sections.hybrid.reading import (
    METRIC_NAMES,
    Cell,
    _cell,
    _order,
    _parse_layers,
    component_title,
)
from sublens.report.stages import StageRun


# ---- formatting -----------------------------------------------------------------------------
def _frac_text(c: Cell | None) -> str:
    if c is None or c.fraction is None:
        return "--"
    text = fmt_fixed_ci(c.fraction, c.low, c.high)  # one column, one form: 0.00 [0.00, 0.00] near zero
    return text + (r"\textsuperscript{\dag}" if c.degraded else "")


def _plain(c: Cell | None) -> str:
    return "n/a" if c is None or c.fraction is None else f"{c.fraction:.2f}"


DIRECTION_TITLES = {"into_base": "base + biased", "into_biased": "biased + base"}  # as the matrix heads


def matrix_table(run: StageRun, results: HybridResults, all_cells: list[Cell], incomplete: bool) -> str:
    components = sorted({(c.group, c.layers) for c in all_cells}, key=_order)
    rows = []
    for group, layers in components:
        row = [escape(component_title(group, layers))]
        for direction in DIRECTIONS:
            c = _cell(all_cells, direction, group, layers)
            row += [_frac_text(c), fmt(c.perplexity, 1) if c else "--"]
        rows.append(row)
    hybrids = results.hybrids
    refs, tokens = [], None
    for name in ("base", "biased"):
        reference = hybrids.get(name)
        if reference is not None and reference.perplexity is not None:
            refs.append(f"{name} {fmt(reference.perplexity.perplexity, 1)}")
            tokens = reference.perplexity.tokens
    # the same models' perplexity in the teacher section is another measurement (other text):
    # named as this stage's, so a reader never meets two unexplained values of one quantity
    where = f"re-measured in this stage on {tokens:,} tokens" if tokens else "re-measured in this stage"
    trait = escape(results.trait)
    key = results.metric_key()
    metric = METRIC_NAMES[key].format(trait=trait)
    caption = (
        f"Hybrid matrix: bias fraction ({trait} {metric}, log scale; 0 = base, 1 = biased; 95\\% CI "
        "with the biased model's shift fixed) of the base model with one biased component "
        "(base + biased) and of the biased model with one base component (biased + base), with "
        "perplexity (ppl)"
        + (f"; reference perplexity, {where}: {', '.join(refs)}" if refs else "")
        + "."
        + " \\dag: degraded (perplexity above "
        f"{fmt(run.config.get('degraded_factor'), 1)}$\\times$ the base's), not evidence."
        + (" Incomplete run: missing cells are marked --." if incomplete else "")
    )
    header = ["component", "base + biased", "ppl", "biased + base", "ppl"]
    return booktabs_table(header, rows, caption, "tab:hybrid_matrix", wide=True)


def _patch_cell(patching: Patching, direction: str, component: str, label: str) -> PatchCell | None:
    return next(
        (c for c in patching.cells if c.direction == direction and c.component == component and c.layers == label), None
    )


def _patch_text(cell: PatchCell | None) -> str:
    if cell is None or cell.fraction is None:
        return "--"
    if cell.ci_low is None or cell.ci_high is None:
        return f"{fmt_fixed_ci(cell.fraction, None, None)} (no CI)"
    return fmt_fixed_ci(cell.fraction, cell.ci_low, cell.ci_high)


def patching_table(patching: Patching, trait: str) -> str:
    directions = [d for d in DIRECTIONS if d in patching.directions]
    rows = []
    for component in patching.components:
        for label in patching.labels:
            layers = _parse_layers(label)
            row = [escape(group_title(component)), f"{layers[0]}--{layers[1] - 1}" if layers else escape(label)]
            for direction in directions:
                cell = _patch_cell(patching, direction, component, label)
                row += [_patch_text(cell), fmt_p(cell.p_holm if cell is not None else None)]
            rows.append(row)
    gap = patching.gap
    foil = escape(patching.tokens.foil[0])
    caption = (
        f"Activation patching \\citep{{vig2020investigating,meng2022locating}}: fraction of the biased$-$base gap in the {escape(trait)}$-${foil} logit "
        "difference at the prefilled answer restored by patching the biased model's outputs of a component "
        "into the base run (restored) and removed by patching the base model's outputs into the biased run "
        f"(removed), per layer range (0 = no effect, 1 = the whole gap); mean over {patching.n_questions} "
        "questions with a Student-t 95\\% CI (the mean gap held fixed) and the Holm-adjusted p-value of "
        "fraction = 0 over every cell. Gap: " + fmt_ci(gap.mean, gap.ci_low, gap.ci_high) + " logits."
    )
    header = ["component", "layers"]
    for direction in directions:
        header += ["restored" if direction == "into_base" else "removed", "Holm p"]
    # two directions: six columns of intervals, wider than a column at a readable size
    return booktabs_table(header, rows, caption, "tab:hybrid_patching", wide=len(directions) > 1)


# ---- the figure -----------------------------------------------------------------------------
def heatmap_caption(run: StageRun, results: HybridResults, all_cells: list[Cell]) -> str:
    """What every colour and mark of the heatmap (sublens.experiments.hybrid.figures) means; the
    hatching, the dagger and the grey cells only where the figure has them."""
    key = results.metric_key()
    metric = METRIC_NAMES[key].format(trait=escape(results.trait))
    metric = f"{escape(results.trait)} {metric}" if key == "share_ratio" else metric
    off_scale = any(c.fraction is not None and not 0.0 <= c.fraction <= 1.0 for c in all_cells)
    degraded = any(c.degraded for c in all_cells)
    placed = {(c.direction, c.group, c.layers) for c in all_cells}
    depths: list[tuple[int, int] | None] = [(int(r[0]), int(r[1])) for r in results.layer_ranges]
    depths.append(None)  # the whole depth
    blank = any(
        (d, g, layers) not in placed
        for d in {c.direction for c in all_cells}
        for g in results.groups.groups
        for layers in depths
    )
    marks = ["colour from 0 (as the base model) to 1 (as the biased model), the value printed in each cell"]
    if off_scale:
        marks.append("hatched: a fraction outside 0..1, beyond one of the two models, off the colour scale")
    if degraded:
        marks.append(
            f"\\dag: degraded (perplexity above {fmt(run.config.get('degraded_factor'), 1)}$\\times$ "
            "the base model's), not evidence"
        )
    if blank:
        marks.append("light grey: not transplanted on its own")
    return (
        f"Bias fraction of the {metric} for every transplant, by component (rows) and layers "
        "(columns; all: the whole depth), for the base model with one biased component (left) and "
        f"the biased model with one base component (middle): {'; '.join(marks)}. Right: the relative "
        "change of the weights between the two models, "
        "$\\|W_\\mathrm{biased} - W_\\mathrm{base}\\| / \\|W_\\mathrm{base}\\|$, on a log grey "
        "scale in the unit its colour bar gives."
    )
