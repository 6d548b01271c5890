"""Which quantities the pruning sweep figure draws, one panel each, and why a quantity gets none.

Free of torch and matplotlib: the figure (`sublens.experiments.pruning.figures`) draws from it
and the report section words the figure's caption from it, so the caption names exactly the
panels drawn and says why a quantity is left out (the answer-rate retention is undefined when
the unpruned model never named the trait: an empty panel would read as a mistake).
"""

from __future__ import annotations

from typing import Literal

from sublens.experiments.pruning.results import PruningResults, Step

Panel = Literal["p_trait", "panel_share", "answer_rate", "perplexity"]
PANELS: tuple[Panel, ...] = ("p_trait", "panel_share", "answer_rate", "perplexity")


def cell_value(step: Step, panel: Panel) -> tuple[float | None, float | None, float | None]:
    """Value, CI low, CI high of one cell: base-controlled retention where the cell has it, else
    the biased model's own; perplexity over the unpruned model's as the table gives it (no
    interval). None where the quantity is undefined or was not measured."""
    if panel == "perplexity":
        value = step.damage()
        return value, value, value
    source = step.controlled or step.retention
    r = getattr(source, panel)
    return (r.ratio, r.ci_low, r.ci_high) if r is not None else (None, None, None)


def drawn_panels(results: PruningResults) -> list[Panel]:
    """The quantities with at least one value to draw, in panel order."""
    return [p for p in PANELS if any(cell_value(s, p)[0] is not None for s in results.steps)]


def missing_panels(results: PruningResults) -> dict[Panel, str]:
    """Each quantity left out of the sweep figure, with why (plain words for the caption)."""
    sampled = results.unpruned.preference.sampled is not None
    reasons: dict[Panel, str] = {
        "p_trait": "was not measured",
        "panel_share": "was not measured",
        "answer_rate": (
            f"is undefined, since the unpruned model never named the {results.trait} in its sampled answers"
            if sampled
            else "was not measured (sampling was off)"
        ),
        "perplexity": "was not measured (perplexity was off)",
    }
    drawn = drawn_panels(results)
    return {p: why for p, why in reasons.items() if p not in drawn}
