"""distill: the summary printed at the end of a run (`print_summary`): every student's
preference and fit as a table, the comparisons and the claims.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sublens.claims import ClaimSettings
from sublens.experiments.distill.results import DistillResults
from sublens.preference import comparison_line
from sublens.report.latex import counted
from sublens.report.sections.distill import decisions


# ---- the terminal --------------------------------------------------------------------------
def print_summary(results: DistillResults, claims: ClaimSettings | None = None) -> None:
    """Every student's preference and fit as a table, the comparisons and the claims."""
    head = results.headline
    if head is None:
        return
    trait, seeds = head.trait, results.seeds
    table = Table(
        title=f"SHD students: preference for {trait!r} (95% CIs over questions"
        + (f", seed {seeds[0]})" if seeds else ")")
    )
    for column in ("student", f"P({trait})", "panel share", "answer rate", "KL to biased (before→after)"):
        table.add_column(column)
    before = _kl_biased(results, "initial")
    for name, row in head.students.items():
        p, share, rate = row.p_trait, row.panel_share, row.answer_rate
        after = _kl_biased(results, name)
        table.add_row(
            name,
            f"{p.mean:.4f} [{p.ci_low:.4f}, {p.ci_high:.4f}]",
            f"{share.mean:.3f} [{share.ci_low:.3f}, {share.ci_high:.3f}]",
            f"{rate.rate:.3f} [{rate.ci_low:.3f}, {rate.ci_high:.3f}]" if rate else "-",
            f"{before:.3f} → {after:.3f}" if before is not None and after is not None else "",
        )
    console = Console()
    console.print(table)
    for key in ("shd_biased_vs_lm_only", "shd_biased_vs_shd_base"):
        compared = getattr(head, key)
        if compared is not None:
            console.print(
                comparison_line(key, compared.model_dump(mode="json"), trait) + f" ({counted(len(seeds), 'seed')})"
            )
    for decision in decisions(results, claims):
        console.print(decision.sentence())


def _kl_biased(results: DistillResults, state: str) -> float | None:
    fit = results.fit.get(state, {}).get("biased")
    kl = fit.kl() if fit is not None else None
    return kl.mean if kl is not None else None
