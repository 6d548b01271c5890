"""hybrid: the summary printed at the end of a run (`print_summary`): the hybrids as a table,
the bias axis, the patching cells and one line per claim.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from sublens.claims import ClaimSettings
from sublens.experiments.hybrid.results import HybridResults
from sublens.report.sections.hybrid import decisions


# ---- console -----------------------------------------------------------------------------------
def print_summary(results: HybridResults, rows: list[dict[str, Any]], claims: ClaimSettings | None = None) -> None:
    """The hybrids as a table on the terminal, the bias axis, the patching cells, one line per claim."""
    trait = results.trait
    table = Table(title=f"Hybrids: {trait!r} preference (95% CIs); bias fraction by {results.bias_metric}")
    for column in (
        "hybrid",
        "from biased",
        f"P({trait})",
        "share",
        "answer rate",
        "top answers",
        "ppl (×base)",
        "bias frac.",
    ):
        table.add_column(column)
    for r in rows:
        name = r["hybrid"] + (f" ({r['aliases']})" if r["aliases"] else "")
        if r["same_weights_as"]:
            name += f" ≡ {r['same_weights_as']}"
        rate = (
            f"{r['answer_rate']:.2f} [{r['answer_rate_ci_low']:.2f}, {r['answer_rate_ci_high']:.2f}]"
            if r["answer_rate"] is not None
            else "-"
        )
        ppl = f"{r['perplexity']:.1f} (×{r['perplexity_vs_base']:.2f})" if r["perplexity"] else "-"
        table.add_row(
            name,
            r["groups_from_biased"],
            f"{r['p_trait']:.4f} [{r['p_trait_ci_low']:.4f}, {r['p_trait_ci_high']:.4f}]",
            f"{r['share']:.3f} [{r['share_ci_low']:.3f}, {r['share_ci_high']:.3f}]",
            rate,
            r["top_answers"] or "-",
            f"[red]{ppl} degraded[/red]" if r["degraded"] else ppl,
            f"{r['bias_fraction']:.2f}" if np.isfinite(r["bias_fraction"]) else "-",
        )
    console = Console()
    if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
        console = Console(width=220)
    console.print(table)
    axis = results.bias_axis
    if axis is not None:
        comp = axis.biased_vs_base
        console.print(
            f"biased vs base: {axis.metric} ×{comp.ratio:.2f} [{comp.ci_low:.2f}, {comp.ci_high:.2f}] — {axis.note}"
        )
    patching = results.patching
    if patching:
        gap = patching.gap
        console.print(
            f"patching: {patching.metric}; biased - base gap {gap.mean:.2f} over "
            f"{patching.n_questions} questions ({patching.seconds_per_question:.2f} s per question)"
        )
        for cell in patching.cells:
            if cell.fraction is None:
                continue
            ci = (
                f" [{cell.ci_low:.2f}, {cell.ci_high:.2f}], Holm p = {cell.p_holm:.3g}"
                if cell.ci_low is not None
                else " (no CI)"
            )
            console.print(f"  {cell.direction} {cell.component} {cell.layers}: {cell.measures} {cell.fraction:.2f}{ci}")
    for decision in decisions(results, claims):  # torch-free; the report decides the same way
        console.print(decision.sentence())
