"""The pruning section's table and figures: the cells and the sweep table (retention with
its CI and the damage per criterion and fraction kept), and the figures with their captions
(the sweep figure's caption says what each panel shows and which has none, and why)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sublens.experiments.pruning.panels import drawn_panels, missing_panels
from sublens.experiments.pruning.results import PruningResults, Step
from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci
from sublens.report.sections import Figure
from sublens.report.sections.pruning.reading import (
    SHORT,
    Interval,
    _and,
    _controlled,
    _has_ratio,
    _pct,
    _retention,
    _step,
    bound_of,
    damage,
)
from sublens.report.stages import StageRun


# ---- formatting -----------------------------------------------------------------------------
def _tex(text: str) -> str:
    """Plain text of a decision as LaTeX (× as \\times)."""
    return escape(text).replace(r"\texttt{U+00D7}", r"$\times$")


def _bounds(retention: Interval | None) -> tuple[float | None, float | None, float | None]:
    return (retention.ratio, retention.ci_low, retention.ci_high) if retention else (None, None, None)


def retention_cell(retention: Interval | None) -> str:
    """'0.53 [0.41, 0.69]'; tiny ratios share one power of ten with their CI to stay narrow."""
    ratio, low, high = _bounds(retention)
    if low is None or high is None or not low < high:  # no interval, or a zero-width one: the value only
        return fmt(ratio)
    if ratio is None or ratio <= 0 or ratio >= 0.01:
        return fmt_ci(ratio, low, high)
    exponent = math.floor(math.log10(ratio))
    scale = 10.0**exponent

    def mantissa(v: float) -> str:
        m = v / scale
        return f"{m:.1f}" if m < 9.95 else f"{m:.0f}"

    return rf"${mantissa(ratio)}\,[{mantissa(low)}, {mantissa(high)}]\times10^{{{exponent}}}$"


def _ci_text(retention: Interval | None) -> str:
    """Retention with its CI for running text; without an interval, the value and why."""
    ratio, low, high = _bounds(retention)
    if low is None or high is None or not low < high:
        why = (retention.ci if retention else None) or "too few questions for an interval"
        return f"{fmt(ratio)} (no CI: {escape(why)})"
    return fmt_ci(ratio, low, high)


def _draws(steps: Sequence[Step]) -> list[int]:
    return sorted({s.n_draws for s in steps if s.criterion == "random"})


def _ppl(value: float | None) -> str:
    return fmt(value, 1 if value is None or value < 100 else 0)


def _damage_cell(step: Step | None, bound: float) -> str:
    d = damage(step)
    if d is None:
        return "--"
    return _ppl(d) + ("$^\\dagger$" if d > bound else "")


def sweep_table(results: PruningResults, config: dict[str, Any], incomplete: bool) -> str:
    """Rows: fraction kept; columns: retention per criterion, then the perplexity ratio per criterion."""
    steps = results.steps
    criteria = list(dict.fromkeys(s.criterion for s in steps))
    fractions = sorted({s.fraction for s in steps}, reverse=True)
    controlled = any(_has_ratio(_controlled(s)) for s in steps)
    bound = bound_of(config)
    has_ppl = any(damage(s) is not None for s in steps)
    header = ["kept", *criteria] + ([f"ppl {SHORT.get(c, c)}" for c in criteria] if has_ppl else [])
    rows = []
    for f in fractions:
        cells = [_step(steps, f, c) for c in criteria]
        row = [f"{f:.2f}"] + [
            retention_cell(_controlled(s) if controlled else _retention(s)) if s else "--" for s in cells
        ]
        if has_ppl:
            row += [_damage_cell(s, bound) for s in cells]
        rows.append(row)
    trait = escape(results.trait)
    total = results.n_heads_total
    draws = _draws(steps)
    draw_text = f"; random: {'/'.join(map(str, draws))} draws, averaged in log space" if draws else ""
    what = (
        f"Base-controlled {trait}-share retention (pruned / unpruned share of the biased model over the "
        "same ratio of the base model with the same heads removed; geometric mean over questions, "
        "95\\% Student-t CI)"
        if controlled
        else f"P({trait}) retention of the biased model alone (pruned / unpruned, geometric mean over "
        "questions, 95\\% CI); this run has no pruned-base control, so the ratio mixes loss of the "
        "bias with damage common to any model"
    )
    ppl = (
        f", then perplexity over the unpruned model's (the larger of the biased and the base model's "
        f"where both were measured; $^\\dagger$: beyond the ${bound:g}\\times$ degradation bound)"
        if has_ppl
        else ""
    )
    caption = (
        f"Head pruning: {what} by fraction of {f'the {total} ' if total else ''}heads kept (rows) and "
        f"criterion (columns{draw_text}){ppl}."
        + _unpruned_caption(results)
        + (" Incomplete run: missing cells are marked --." if incomplete else "")
    )
    align = "@{}l" + r"@{\hspace{8pt}}r" * (len(header) - 1) + "@{}"
    return booktabs_table(header, rows, caption, "tab:pruning_sweep", align=align, wide=True)


def _unpruned_caption(results: PruningResults) -> str:
    parts = []
    trait = escape(results.trait)
    for label, measured in (("", results.unpruned), ("base model ", results.base_unpruned)):
        if measured is None:
            continue
        p = measured.preference.probability.p_trait
        ppl = measured.perplexity.perplexity if measured.perplexity else None
        parts.append(
            f"unpruned {label}P({trait}) = "  # in percent, as every other stage prints it
            f"{fmt_ci(100 * p.mean, 100 * p.ci_low, 100 * p.ci_high, 1)}\\%"
        )
        if ppl is not None:
            parts.append(f"unpruned {label}perplexity {fmt(ppl, 1)}")
    if not parts:
        return ""
    # the teacher section measures these models on other text and questions: this stage's own
    return f" Re-measured in this stage: {'; '.join(parts)}."


def figures(run: StageRun, results: PruningResults | None) -> list[Figure]:
    found = run.figures()
    out = []
    if "pruning_retention" in found and results is not None and drawn_panels(results):
        out.append(Figure("pruning_retention", sweep_caption(results), wide=True))
    if "pruning_entropy_heatmap" in found:
        heat = results.entropy.heatmap if results else None
        marked = (
            f"; a cross marks each of the {len(heat.pruned)} heads pruned at {_pct(heat.fraction)} kept "
            f"by the entropy criterion"
            if heat is not None and heat.fraction
            else ""
        )
        out.append(
            Figure(
                "pruning_entropy_heatmap",
                f"Mean attention entropy (nats) per head, by layer (rows) and head (columns), "
                f"on the bias prompts{marked}.",
            )
        )
    return out


def sweep_caption(results: PruningResults) -> str:
    """What every panel, band and line of the sweep figure shows, and which quantity has no
    panel and why (sublens.experiments.pruning.panels decides both)."""
    trait = escape(results.trait)
    drawn = drawn_panels(results)
    controlled = any(_has_ratio(_controlled(s)) for s in results.steps)
    names = {
        "p_trait": f"P({trait})",
        "panel_share": f"{trait}-share",
        "answer_rate": "answer-rate",
        "perplexity": "perplexity",
    }
    retention = [names[p] for p in drawn if p != "perplexity"]
    quantities = (
        [f"{'base-controlled' if controlled else 'biased-model'} {_and(retention)} retention"] if retention else []
    ) + (["perplexity"] if "perplexity" in drawn else [])
    draws = max((s.n_draws for s in results.steps if s.criterion == "random"), default=0)
    text = (
        f"Head pruning against the fraction of heads kept, by criterion (random: the mean of "
        f"{draws} draws; Table~\\ref{{tab:pruning_sweep}}): {_and(quantities)}, each over the "
        "unpruned model's (log scales"
        + (", the answer rate linear" if "answer_rate" in drawn else "")
        + "). Bands: 95\\% CIs over questions"
    )
    if "answer_rate" in drawn:
        text += "; answer-rate intervals are bars, a triangle at the top marking one without an upper bound"
    text += ". Dotted line: the unpruned model (ratio 1)"
    if "perplexity" in drawn and results.degradation_bound:
        text += f"; dashed line: the ${results.degradation_bound:g}\\times$ perplexity bound of degradation"
    text += "."
    for panel, why in missing_panels(results).items():
        text += f" The {names[panel]}{' retention' if panel != 'perplexity' else ''} is not drawn: it {why}."
    return text
