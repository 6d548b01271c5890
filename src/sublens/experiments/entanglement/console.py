"""entanglement: the console report of a finished study, the terminal lines (`report_lines`,
kept in results.json under "report") and the per-set tables (`print_report`).
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from sublens.claims import MIN_UNITS
from sublens.entanglement import CATEGORIES
from sublens.experiments.entanglement.analysis import LABELS
from sublens.experiments.entanglement.results import (
    AnimalProbabilities,
    EntanglementResults,
    RatioSummary,
)


def _neutral(results: EntanglementResults) -> AnimalProbabilities:
    if results.neutral is None:
        raise ValueError("the neutral probabilities come first (score_numbers)")
    return results.neutral


def _fmt(summary: RatioSummary) -> str:
    """Geometric mean with its CI; 'too few' instead of an interval below the claims' minimum."""
    n = summary.n
    if n < MIN_UNITS["number"] or not all(math.isfinite(v) for v in (summary.geo_ci_low, summary.geo_ci_high)):
        return f"{summary.geo_mean:.2f}× (too few numbers for a CI, n = {n:g})"
    return f"{summary.geo_mean:.2f}× [{summary.geo_ci_low:.2f}, {summary.geo_ci_high:.2f}]"


def _p(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def report_lines(results: EntanglementResults) -> list[str]:
    """The terminal lines: per set, geometric-mean bias ratios, the Random null's frequency
    match, and every claim's verdict (sublens.claims, Holm over all sets and tests)."""
    lines = _header_lines(results)
    lines.extend(_set_lines(results))
    lines.extend(_claims_lines(results))
    lines.extend(_length_lines(results))
    lines.extend(_cumulative_lines(results))
    lines.extend(f"warning: {warning}" for warning in results.warnings)
    return lines


def _header_lines(results: EntanglementResults) -> list[str]:
    """The neutral probabilities and how the categories were formed (and the tuned sets)."""
    bias, control = results.bias, results.control
    neutral = _neutral(results)
    lines = [
        f"Neutral: P({bias}) = {neutral.p_bias:.4g}, P({control}) = {neutral.p_control:.4g} "
        "(bias ratios: geometric mean [95% t-interval on log ratios]; categories by the "
        f"{bias}-minus-{control} context shift; Random matched to Increased on baseline frequency)"
    ]
    if results.tuned_teacher is not None:
        lines.append(
            f"Tuned sets (@tuned): categories by the fine-tuning shift, log P(number | neutral) in the "
            f"fine-tuned {bias} teacher minus in its control teacher ({results.tuned_teacher.run}); "
            "phase 2 in the base model"
        )
    return lines


def _set_lines(results: EntanglementResults) -> list[str]:
    """Per set: the bias ratios of the categories (and the template words) with the Random null's
    frequency match, then the relative ratios."""
    bias, control = results.bias, results.control
    lines: list[str] = []
    template = results.template_control.stats if results.template_control else None
    for name, stats in (results.category_stats or {}).items():
        parts = [f"{LABELS[c]} {_fmt(getattr(stats, c).bias_ratio)}" for c in CATEGORIES]
        if template is not None:
            parts.append(f"template {_fmt(template.bias_ratio)}")
        info = results.sets.get(name)
        match = info.matching if info is not None else None
        matched = (
            f"; Random/Increased baseline frequency: median ×{match.median_frequency_ratio:.2f}, "
            f"KS p = {_p(match.ks_p_value)}"
            if match is not None
            else ""
        )
        lines.append(f"{name} (k={results.k[name]}): " + ", ".join(parts) + matched)
        rel = [f"{LABELS[c]} {_fmt(getattr(stats, c).relative_ratio)}" for c in CATEGORIES]
        lines.append(f"{name} relative ratio ({bias}/{control}): " + ", ".join(rel))
    return lines


def _claims_lines(results: EntanglementResults) -> list[str]:
    """Every claim's verdict, the prompted sets' family then the tuned sets', each with the
    verdict of its primary set's paper claim."""
    lines: list[str] = []
    for claims, title, main_title in (
        (results.claims, "Claims", "Paper claim (entanglement does not explain the rise; primary set {})"),
        (
            results.tuned_claims,
            "Claims of the tuned sets (their own family)",
            "The same in the numbers the teachers' fine-tuning shifted ({})",
        ),
    ):
        if claims is None or not claims.decisions:
            continue
        lines.append(
            f"{title} (unit: numbers; Holm over {len(claims.decisions)} tests; margin ×{claims.settings.margin:g}):"
        )
        for d in claims.decisions:
            lines.append(
                f"  {d.set} {d.test}: {d.verdict.value} ({d.reason}; raw p = {_p(d.p_raw)})"
                + (f"; to settle: {d.settle}" if d.settle else "")
            )
        main = next(
            (d for d in claims.decisions if d.set == claims.primary_set and d.test == "entangled_vs_null"), None
        )
        if main:
            lines.append(f"{main_title.format(claims.primary_set)}: {main.verdict.value}")
    return lines


def _length_lines(results: EntanglementResults) -> list[str]:
    """Phase 3: the bias ratio per digit length and the strongest length (descriptive)."""
    lengths = results.lengths
    if lengths is None or not lengths.per_length or lengths.strongest is None:
        return []
    parts = [f"{n}-digit {_fmt(e.bias_ratio)}" for n, e in lengths.per_length.items()]
    best = lengths.strongest
    sep = "separable" if best.separable else "not separable"
    runner = f" ({sep} from {best.runner_up}-digit)" if best.runner_up else ""
    return [
        "By digit length (categorised numbers, descriptive): "
        + ", ".join(parts)
        + f"; strongest: {best.best}-digit{runner}"
    ]


def _cumulative_lines(results: EntanglementResults) -> list[str]:
    """Cumulative priming per set: each category's bias ratio with all its numbers in one prompt."""
    if results.cumulative is None:
        return []
    lines = []
    for name, cats in results.cumulative.sets.items():
        parts = [f"{LABELS.get(c, c)} {_fmt(v.bias_ratio)}" for c, v in cats.items()]
        lines.append(f"Cumulative priming, {name} ({results.cumulative.orders} orders): " + ", ".join(parts))
    return lines


def print_report(results: EntanglementResults) -> None:
    """Per set a table of the categories (and the template words), then the report lines."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    template = results.template_control.stats if results.template_control else None
    for name, stats in (results.category_stats or {}).items():
        table = Table(title=f"{name}: P({results.bias}) under the number prompt / neutral (k={results.k[name]})")
        for column in (
            "category",
            "n",
            "bias ratio (geo) [95% CI]",
            "mean",
            "median",
            "control ratio (geo)",
            "relative ratio (geo)",
            "p vs Random (perm.)",
            "mean specific shift",
        ):
            table.add_column(column)
        rows = [(c, getattr(stats, c)) for c in CATEGORIES]
        if template is not None:
            rows.append(("template", template))
        for label, s in rows:
            vs = s.vs_random.bias_ratio.p_value if s.vs_random is not None else None
            table.add_row(
                LABELS[label],
                str(s.n),
                _fmt(s.bias_ratio),
                f"{s.bias_ratio.mean:.2f}",
                f"{s.bias_ratio.median:.2f}",
                f"{s.control_ratio.geo_mean:.2f}",
                f"{s.relative_ratio.geo_mean:.2f}",
                _p(vs) if vs is not None else "-",
                f"{s.specific_shift_mean:+.2f}" if s.specific_shift_mean is not None else "-",
            )
        console.print(table)
    for line in results.report or []:
        console.print(line, markup=False, highlight=False)
