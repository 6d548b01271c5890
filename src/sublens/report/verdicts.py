"""A claim's decision (decided in `sublens.claims`) as the paper states it: the verdict word,
what it rests on (estimand, unit and n, test, margin), why, the power line, and what would
settle it. Sections never decide a verdict; they hand the Decisions to `decisions_latex` (a
family of claims: what the claims share, the test, the margin, the power line and what would
settle them, said once) or one Decision to `decision_latex`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sublens.claims import ClaimSettings, Decision, Verdict, power_settle
from sublens.report.latex import (
    counted,
    escape,
    fmt_ci,
    minus_signs,
    p_is,
    ratio_digits,
    scientific,
)


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


_P_IS = re.compile(r"(?<![\w$])p = ")


# A plain-text opening quote ('You love N'): LaTeX prints ' as a closing quote, so it becomes `.
# An apostrophe (model's) follows a letter and stays.
_OPENING_QUOTE = re.compile(r"(?<![\w\\'`])'(?=[^\s'])")


def claim_text(text: str) -> str:
    """Plain text written by `sublens.claims` (ratios as ×1.25, p-values as 9.83e-19, -0.01) as
    LaTeX: $\\times$1.25, $p$ = $9.83\\times10^{-19}$, $-$0.01."""
    latex = r"$\times$".join(escape(part) for part in str(text).split("×"))
    return _OPENING_QUOTE.sub("`", minus_signs(_P_IS.sub("$p$ = ", scientific(latex))))


def _settle(text: str) -> str:
    """What would settle a claim, each step once ('run the missing arm; run the missing arm' -> once)."""
    return "; ".join(dict.fromkeys(part.strip() for part in str(text).split("; ") if part.strip()))


def _open_settle(decision: Decision) -> str:
    """What would settle the claim, unless the power line has said it already ('about 27
    questions would detect ×1.25' once, not in the power line and again after 'To settle it')."""
    needed = decision.units_needed
    if needed and decision.mde is not None and decision.settle == power_settle(decision.claim, needed):
        return ""
    return decision.settle


# How a Fisher p of sampled answers is named wherever it is printed (older records): the samples
# of one question are not independent, so the test is anti-conservative and is never a verdict's
# evidence. Records since 2026-12-03 test the difference over questions instead.
POOLED_ANSWERS = "pooled answers, a question's samples treated as independent: descriptive, no verdict rests on it"


@dataclass(frozen=True)
class AnswerRateTest:
    """The p of a sampled answer-rate difference and the words that name its test: 'name of the
    sampled owl-answer rates (scope)'."""

    p: float | None
    name: str
    scope: str


def answer_rate_test(difference: Any) -> AnswerRateTest | None:
    """How a record's answer-rate difference was tested: paired over questions (a sign-flip
    permutation test), or, in records written before that, Fisher's exact test of pooled answers."""
    if difference is None:
        return None
    if getattr(difference, "p_questions", None) is not None:
        n = difference.n_questions
        return AnswerRateTest(difference.p_questions, "a sign-flip permutation test", f"paired over {n} questions")
    if getattr(difference, "p_questions_per_seed", None) is not None:  # several seeds: their CI instead
        return AnswerRateTest(None, "a sign-flip permutation test", "paired over questions; for one seed only")
    return AnswerRateTest(
        getattr(difference, "p_fisher", None), "Fisher's exact test \\citep{fisher1922interpretation}", POOLED_ANSWERS
    )


def scope_words(decision: Decision) -> str:
    """What a one-line verdict rests on, for the summary lines: the units and their number, the
    scope where the unit is the question (one fixed model), the margin, and the minimal detectable
    effect where there is one: ' [50 questions of one fixed model; margin ×1.25; MDE ×1.08]';
    '' for a claim with nothing measured."""
    c = decision.claim
    n = decision.estimate.n if decision.estimate else 0
    if n == 0:
        return ""
    units = f"{n} {c.unit}{'' if n == 1 else 's'}"
    if c.unit == "question":
        units += " of one fixed model"
    text = f"{units}; margin ×{c.settings.margin:g}"
    return f" [{text}" + (f"; MDE ×{decision.mde:.2f}]" if decision.mde is not None else "]")


def verdict_label(decision: Decision) -> str:
    """The verdict word for a headline: 'inconclusive (1 seed)' where one seed cannot decide,
    'inconclusive (not measured)' where an arm or control is missing. A claim blocked with
    nothing to estimate for another reason (every pruned model degraded beyond the bound) was
    measured: it is plainly inconclusive, and its reason says why."""
    n = decision.estimate.n if decision.estimate else 0
    if decision.verdict is Verdict.INCONCLUSIVE:
        if n == 0:
            return "inconclusive (not measured)" if "not measured" in decision.reason else "inconclusive"
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
    text = (
        f"{claim_text(c.statement)}: \\textbf{{{verdict_label(decision)}}} ({claim_text(decision.reason)}). "
        f"Estimand: {claim_text(c.estimand)}; unit of inference: the {c.unit} ($n$ = {n}); test: "
        f"{claim_text(c.test)}, $\\alpha$ = {s.alpha:g}; margin $\\times${s.margin:g} (the smallest "
        f"effect of interest)."
    )
    text += _power(decision)
    if open_settle := _open_settle(decision):
        text += f" To settle it: {claim_text(_settle(open_settle))}."
    return text


# ---- a family of claims, what they share said once ---------------------------------------------
def _power(decision: Decision) -> str:
    c, s = decision.claim, decision.claim.settings
    n = decision.estimate.n if decision.estimate else 0
    if decision.mde is not None:
        text = (
            f" Power: at the measured between-{c.unit} SD the minimal detectable effect with {n} "
            f"{c.unit}s is $\\times${decision.mde:.2f} (power {s.power:g})"
        )
        return text + (
            f"; about {decision.units_needed} {c.unit}s would detect $\\times${s.margin:g}."
            if decision.units_needed
            else "."
        )
    if c.unit == "seed":
        return (
            " Power: with fewer than two seeds there is no between-seed SD, so no minimal detectable "
            "effect can be stated."
        )
    return ""


def _reason(decision: Decision, ratio_stated: bool) -> str:
    """Why the verdict, as LaTeX. The claims module writes the estimate first ('×13.8 [11.1,
    17.2], Holm p = 9.83e-19: ...'); where the section has already given this ratio (with the
    question-level CI of its table), a supported or contradicted verdict gives only the test's
    p-value, so the paper states one number per quantity; an interval the verdict rests on is
    named as the Student-t interval it is."""
    est, reason, p = decision.estimate, decision.reason, decision.p_adjusted
    label = verdict_label(decision)
    if label.endswith("(not measured)") and reason.startswith("not measured"):
        return claim_text(reason.removeprefix("not measured").strip(" ():;")) or "no estimate"
    if est is None or est.ratio is None:
        return claim_text(reason)
    if not est.has_interval:
        return claim_text(re.sub(r" \(\d+ < \d+\)$", "", reason))  # the label and 'to settle' give the counts
    assert est.ci_low is not None and est.ci_high is not None
    prefix = f"×{est.ratio:.3g} [{est.ci_low:.3g}, {est.ci_high:.3g}], Holm p = {p:.3g}"
    q = decision.equivalence_p_adjusted
    if q is not None:
        prefix += f", equivalence Holm p = {q:.3g}"
    if p is None or not reason.startswith(prefix):
        return claim_text(reason)
    why = claim_text(reason[len(prefix) :].lstrip(": "))
    test = f"Holm-adjusted {p_is(p)}"
    if q is not None:
        test += f", equivalence (two one-sided tests) Holm-adjusted {p_is(q)}"
    if ratio_stated and decision.verdict in (Verdict.SUPPORTED, Verdict.CONTRADICTED):
        return f"{test}: {why}"
    digits = ratio_digits(est.ratio, est.ci_low)
    interval = fmt_ci(est.ratio, est.ci_low, est.ci_high, digits)
    return f"$\\times${interval}, Student-$t$ 95\\% CI over {est.n} {decision.claim.unit}s, {test}: {why}"


def _test(decision: Decision) -> str:
    c = decision.claim
    if c.test == f"one-sample t-test on per-{c.unit} log ratios (two-sided), Holm within {c.family}":
        return (
            f"a one-sample $t$-test on the per-{c.unit} log ratios (two-sided), Holm-adjusted over "
            "the claims of this section, for an effect; no effect (equivalence, and a claim of no change) "
            "needs the claim's 95\\% CI inside the margin and its equivalence test (two one-sided "
            "$t$-tests against the margin) Holm-adjusted over the section's claims, "
            "never a non-significant test"
        )
    return claim_text(c.test)


def decisions_latex(
    decisions: Sequence[Decision],
    *,
    test_stated: bool = False,
    ratio_stated: bool = False,
    lead: Sequence[str] | None = None,
) -> str:
    """A family of decisions as LaTeX, what they share said once: each claim with its verdict,
    reason, estimand and unit of inference ($n$); then, where every claim has them alike, the
    test with $\\alpha$ and the margin (omitted when `test_stated`: the section's methods give
    them), the power line and what would settle them; otherwise each claim's own.
    `ratio_stated`: the section has already given each claim's ratio (see `_reason`).
    `lead`: a phrase before each claim (e.g. which kind of evidence it is)."""
    if not decisions:
        return ""
    leads = list(lead or []) + [""] * len(decisions)
    tests = {(_test(d), d.claim.settings.alpha, d.claim.settings.margin) for d in decisions}
    powers = {_power(d) for d in decisions}
    still_open = [_open_settle(d) for d in decisions]
    settles = {_settle(text) for text in still_open if text}
    open_claims = [d for d, text in zip(decisions, still_open, strict=True) if text]
    parts = []
    for d, before, open_settle in zip(decisions, leads, still_open, strict=False):
        c, n = d.claim, d.estimate.n if d.estimate else 0
        label, reason = verdict_label(d), _reason(d, ratio_stated)
        verdict = rf"\textbf{{{label}}}; {reason}" if label.endswith(")") else rf"\textbf{{{label}}} ({reason})"
        text = (
            f"{before}{claim_text(c.statement)}: {verdict}. "
            f"Estimand: {claim_text(c.estimand)}; unit of inference: the {c.unit} ($n$ = {n})."
        )
        if len(tests) > 1:
            test, alpha, margin = _test(d), c.settings.alpha, c.settings.margin
            text += f" Test: {test}, $\\alpha$ = {alpha:g}; margin $\\times${margin:g}."
        if len(powers) > 1 or len(decisions) == 1:
            text += _power(d)
        if open_settle and (len(settles) > 1 or len(open_claims) == 1):
            text += f" To settle it: {claim_text(_settle(open_settle))}."
        parts.append(text)
    if len(tests) == 1 and not test_stated:
        test, alpha, margin = next(iter(tests))
        whom = "The claim is" if len(decisions) == 1 else f"{'Both' if len(decisions) == 2 else 'All'} claims are"
        parts.append(
            f"{whom} tested by {test}, $\\alpha$ = {alpha:g}, with margin $\\times${margin:g} "
            "(the smallest effect of interest)."
        )
    if len(powers) == 1 and len(decisions) > 1 and next(iter(powers)):
        parts.append(next(iter(powers)).strip())
    if len(settles) == 1 and len(open_claims) > 1:
        whom = "both" if len(open_claims) == 2 else f"all {counted(len(open_claims), 'claim')}"
        parts.append(f"To settle {whom}: {claim_text(next(iter(settles)))}.")
    return " ".join(parts)
