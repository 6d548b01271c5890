"""mechanistic: the summary printed at the end of a run (`print_summary`): where the numbers
came from, the DLA closure and the verdict lines.
"""

from __future__ import annotations

from rich.console import Console

from sublens.experiments.mechanistic.config import MechanisticConfig
from sublens.experiments.mechanistic.results import MechanisticResults


# ---- console ----------------------------------------------------------------------------------
def print_summary(results: MechanisticResults, config: MechanisticConfig) -> None:
    console = Console(soft_wrap=True)
    source = results.input
    categories = results.consistency.categories if results.consistency else {}
    where = source.source + (
        f" {source.entanglement_run} [{source.set}]" if source.source == "entanglement_run" else ""
    )
    console.print(
        f"[bold]Mechanistic analysis[/bold] of {results.model.spec}: {source.n_numbers} numbers from {where}"
        + (f" ({', '.join(f'{c} {n}' for c, n in categories.items())})" if categories else " (categories unknown)")
        + f"; {config.bias} vs {config.control}; residual statements {config.residual.format}."
    )
    if source.note is not None:
        console.print(f"Note: {source.note}")
    if results.attribution is not None:
        console.print(
            f"DLA closure: components sum to the logit difference within "
            f"{results.attribution.closure_max_abs_error:.2g}."
        )
    for line in results.verdict or []:
        console.print(f"- {line}")
