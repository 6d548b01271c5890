"""A claim's decision (decided in `sublens.claims`) as the paper states it: the verdict word,
what it rests on (estimand, unit and n, test, margin), why, the power line, and what would
settle it. Sections never decide a verdict; they hand the Decision to `decision_latex`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sublens.claims import ClaimSettings, Decision, Verdict
from sublens.report.latex import escape


def claim_settings(config: dict[str, Any] | None) -> ClaimSettings:
    """The run's ``claims`` settings (margin, alpha, power); the defaults for a run recorded
    before the key existed, or with settings that no longer validate."""
    given = (config or {}).get("claims")
    if isinstance(given, dict):
        try:
            return ClaimSettings(**given)
        except ValidationError:
            pass
    return ClaimSettings()


def claim_text(text: str) -> str:
    """Plain text written by `sublens.claims` (ratios as ×1.25) as LaTeX."""
    return r"$\times$".join(escape(part) for part in str(text).split("×"))


def verdict_label(decision: Decision) -> str:
    """The verdict word for a headline: 'inconclusive (1 seed)' where one seed cannot decide."""
    n = decision.estimate.n if decision.estimate else 0
    if decision.verdict is Verdict.INCONCLUSIVE:
        if n == 0:
            return "inconclusive (not measured)"
        if n == 1 and decision.claim.unit == "seed":
            return "inconclusive (1 seed)"
    return decision.verdict.value


def decision_latex(decision: Decision) -> str:
    """A claim's decision as LaTeX: the verdict and its reason, the estimand, the unit of
    inference, the test, the margin, the power line (for a training claim always: the minimal
    detectable effect at the measured between-seed SD, or why there is none) and what would
    settle an inconclusive verdict."""
    c, est = decision.claim, decision.estimate
    n = est.n if est else 0
    s = c.settings
    text = (f"{claim_text(c.statement)}: \\textbf{{{verdict_label(decision)}}} ({claim_text(decision.reason)}). "
            f"Estimand: {claim_text(c.estimand)}; unit of inference: the {c.unit} ($n$ = {n}); test: "
            f"{claim_text(c.test)}, $\\alpha$ = {s.alpha:g}; margin $\\times${s.margin:g} (the smallest "
            f"effect of interest).")
    if decision.mde is not None:
        text += (f" Power: at the measured between-{c.unit} SD the minimal detectable effect with {n} "
                 f"{c.unit}s is $\\times${decision.mde:.2f} (power {s.power:g})")
        text += (f"; about {decision.units_needed} {c.unit}s would detect $\\times${s.margin:g}."
                 if decision.units_needed else ".")
    elif c.unit == "seed":
        text += (" Power: with fewer than two seeds there is no between-seed SD, so no minimal detectable "
                 "effect can be stated.")
    if decision.settle:
        text += f" To settle it: {claim_text(decision.settle)}."
    return text
