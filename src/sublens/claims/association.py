"""Association claims: a signed correlation across units (Pearson or Spearman, optionally
partial) with its Fisher-z interval, the power line for a correlation, and the verdict of such
a claim (`decide_association`, `decide_association_family`), the counterpart of `decide` for
ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from sublens.claims.core import DEFAULT_ALPHA, DEFAULT_POWER, MIN_UNITS, Claim, Verdict, holm

DEFAULT_RHO_OF_INTEREST = 0.3  # the smallest correlation a paper would call an association


class AssociationClaim(Claim):
    """A claim about an association across units (a correlation, signed), not a ratio. The
    prediction reads ``increase`` = positive association, ``decrease`` = negative, ``none`` = no
    association as large as ``rho_of_interest``. `method` states the statistic and its test."""

    method: str  # e.g. "partial Spearman correlation given X, Freedman-Lane permutation p"
    rho_of_interest: float = Field(
        default=DEFAULT_RHO_OF_INTEREST,
        gt=0.0,
        lt=1.0,
        description="smallest |correlation| of interest: equivalence bound and the effect the power line is sized for",
    )
    n_controlled: int = Field(default=0, ge=0)  # variables partialled out (Fisher-z df)
    symbol: str = "rho"  # how the statistic is written (e.g. "V" for Cramér's V)

    @property
    def test(self) -> str:
        return f"{self.method}, Holm within {self.family}"


class Association(BaseModel):
    """A correlation over units with its Fisher-z CI and the p-value of its test."""

    model_config = ConfigDict(frozen=True)

    n: int
    rho: float | None  # None without data (or a constant variable)
    ci_low: float | None  # Fisher-z interval; None when n - n_controlled <= 3
    ci_high: float | None
    p_value: float | None
    interval: str  # how the interval was made, or why there is none
    # What the equivalence test needs: the Fisher-z standard error of a correlation, or the
    # chi-square statistic of Cramér's V with its degrees of freedom and n·(smaller side - 1).
    z_se: float | None = None
    chi2: float | None = None
    chi2_dof: int | None = None
    v_scale: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None


def association_equivalence_p(est: Association | None, rho_of_interest: float) -> float | None:
    """The p-value of the test of "|association| >= rho_of_interest" (smaller: shown smaller).
    A correlation: two one-sided Fisher-z tests, the larger p. Cramér's V (never negative): the
    noncentral chi-square's lower tail at the noncentrality of V = rho_of_interest. Each is below
    0.025 exactly when its 95% CI lies inside ±rho_of_interest; Holm-adjusted over the family in
    `decide_association_family`. None: no interval, or nothing to test with."""
    if est is None or est.rho is None or not est.has_interval:
        return None
    if est.chi2 is not None and est.chi2_dof is not None and est.v_scale is not None:
        noncentrality = rho_of_interest**2 * est.v_scale
        return float(stats.ncx2.cdf(est.chi2, est.chi2_dof, noncentrality))
    if est.z_se is None or not est.z_se > 0:
        return None
    z, bound = math.atanh(est.rho), math.atanh(rho_of_interest)
    return max(float(stats.norm.sf((z + bound) / est.z_se)), float(stats.norm.cdf((z - bound) / est.z_se)))


class AssociationDecision(BaseModel):
    """An association claim's verdict (the counterpart of Decision for correlations)."""

    model_config = ConfigDict(frozen=True)

    claim: AssociationClaim
    verdict: Verdict
    estimate: Association | None
    p_adjusted: float | None
    reason: str
    settle: str
    mde: float | None  # smallest |rho| detectable at this n (power line)
    units_needed: int | None  # units for rho_of_interest to be detectable
    # the equivalence test's p (Holm over the family's), where the CI lies inside ±rho_of_interest
    equivalence_p_adjusted: float | None = None

    def sentence(self) -> str:
        c = self.claim
        text = (
            f"{c.statement}: {self.verdict.value} ({self.reason}). Estimand: {c.estimand}; "
            f"unit: {c.unit}s (n = {self.estimate.n if self.estimate else 0}); test: {c.test}; "
            f"smallest association of interest |{c.symbol}| = {c.rho_of_interest:g}."
        )
        if self.mde is not None:
            text += f" Minimal detectable |{c.symbol}| at this n: {self.mde:.2f}."
        if self.settle:
            text += f" To settle it: {self.settle}."
        return text


def estimate_association(
    rho: float | None, p_value: float | None, n: int, n_controlled: int = 0, level: float = 0.95
) -> Association:
    """A correlation (Pearson or Spearman, optionally partial on `n_controlled` variables) with a
    Fisher-z interval, tanh(atanh(rho) ± z / sqrt(n - n_controlled - 3)); the p-value is the
    caller's (e.g. a permutation p)."""
    if rho is None or not math.isfinite(rho):
        return Association(
            n=n,
            rho=None,
            ci_low=None,
            ci_high=None,
            p_value=None,
            interval="no data (fewer than 3 pairs or a constant variable)",
        )
    p = p_value if p_value is not None and math.isfinite(p_value) else None
    dof = n - n_controlled - 3
    if n < MIN_UNITS["number"] or dof < 1:
        return Association(
            n=n, rho=float(rho), ci_low=None, ci_high=None, p_value=p, interval=f"too few units for an interval ({n})"
        )
    if abs(rho) >= 1.0:
        return Association(n=n, rho=float(rho), ci_low=None, ci_high=None, p_value=p, interval="degenerate: |rho| = 1")
    z, half = math.atanh(rho), float(stats.norm.ppf(0.5 + level / 2)) / math.sqrt(dof)
    return Association(
        n=n,
        rho=float(rho),
        ci_low=math.tanh(z - half),
        ci_high=math.tanh(z + half),
        p_value=p,
        interval=f"Fisher z over {n} units ({n_controlled} controlled)",
        z_se=1 / math.sqrt(dof),
    )


def correlation_power(
    rho: float, n: int | None = None, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER, n_controlled: int = 0
) -> float:
    """With n: the smallest |rho| a two-sided test at `alpha` detects with probability `power`
    (Fisher-z approximation). Without n: the units needed to detect `rho`."""
    zs = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    if n is not None:
        dof = n - n_controlled - 3
        return math.tanh(zs / math.sqrt(dof)) if dof >= 1 else 1.0
    return float(math.ceil((zs / math.atanh(abs(rho))) ** 2 + 3 + n_controlled))


def decide_association(
    claim: AssociationClaim,
    est: Association | None,
    p_adjusted: float | None = None,
    equivalence_p_adjusted: float | None = None,
) -> AssociationDecision:
    """The verdict of an association claim (p_adjusted: Holm within the family; else raw p;
    equivalence_p_adjusted: the equivalence test's p, Holm over the family's; else raw).

    A CI wholly inside ±rho_of_interest, with the equivalence test significant, decides first: equivalent where an association was
    predicted, supported where none was (even when the association is significant: it is
    smaller than the one of interest); an interval inside ±rho_of_interest whose equivalence
    does not survive is inconclusive whatever its significance. Otherwise supported:
    significant in the predicted direction; contradicted: significant the other way (predicting none: significant and the
    CI beyond ±rho_of_interest); else inconclusive (a significant association without an
    interval is of unshown size)."""
    s = claim.settings
    if est is None or est.rho is None:
        return AssociationDecision(
            claim=claim,
            verdict=Verdict.INCONCLUSIVE,
            estimate=est,
            p_adjusted=None,
            reason="not measured",
            settle="measure it",
            mde=None,
            units_needed=None,
        )
    needed = int(correlation_power(claim.rho_of_interest, None, s.alpha, s.power, claim.n_controlled))
    mde = (
        correlation_power(claim.rho_of_interest, est.n, s.alpha, s.power, claim.n_controlled)
        if est.n - claim.n_controlled - 3 >= 1
        else None
    )
    p = est.p_value if p_adjusted is None else p_adjusted
    if p is None or est.n < MIN_UNITS[claim.unit]:
        return AssociationDecision(
            claim=claim,
            verdict=Verdict.INCONCLUSIVE,
            estimate=est,
            p_adjusted=None,
            reason=f"{claim.symbol} = {est.rho:.2f}, no test ({est.interval})",
            settle=f"about {needed} {claim.unit}s",
            mde=mde,
            units_needed=needed,
        )
    p_equivalent = (
        association_equivalence_p(est, claim.rho_of_interest)
        if equivalence_p_adjusted is None
        else equivalence_p_adjusted
    )
    verdict, reason = _verdict(claim, est, p, p_equivalent)
    settle = (
        f"about {needed} {claim.unit}s would detect |{claim.symbol}| = {claim.rho_of_interest:g} (power {s.power:g})"
        if verdict is Verdict.INCONCLUSIVE
        else ""
    )
    return AssociationDecision(
        claim=claim,
        verdict=verdict,
        estimate=est,
        p_adjusted=p,
        reason=reason,
        settle=settle,
        mde=mde,
        units_needed=needed,
        equivalence_p_adjusted=p_equivalent if _within(claim, est) else None,
    )


def _within(claim: AssociationClaim, est: Association) -> bool:
    """The interval wholly inside ±rho_of_interest."""
    r = claim.rho_of_interest
    return est.has_interval and -r < est.ci_low < est.ci_high < r  # type: ignore[operator]


def _verdict(claim: AssociationClaim, est: Association, p: float, p_equivalent: float | None) -> tuple[Verdict, str]:
    """The verdict word and its reason, from the (Holm-adjusted) p, the (Holm-adjusted)
    equivalence p and the interval against ±rho_of_interest (the rules are in
    decide_association's docstring). As for ratios
    (`sublens.claims.core`), an interval wholly inside ±rho_of_interest is read the same way
    whatever was predicted, so one result never supports both a claim and its opposite; and a
    significant association without an interval is of unshown size, never a contradiction."""
    significant, r, sym = p < claim.settings.alpha, claim.rho_of_interest, claim.symbol
    within = _within(claim, est)
    inside = within and (p_equivalent is None or p_equivalent < claim.settings.alpha)
    beyond = est.has_interval and (est.ci_low >= r or est.ci_high <= -r)  # type: ignore[operator]
    interval = f" [{est.ci_low:.2f}, {est.ci_high:.2f}]" if est.has_interval else " (no interval)"
    ci = f"{sym} = {est.rho:.2f}{interval}, Holm p = {p:.3g}"
    if p_equivalent is not None and within:  # where the equivalence test decides
        ci += f", equivalence Holm p = {p_equivalent:.3g}"
    small = ", though significant: an association smaller than that" if significant else ""
    if claim.prediction == "none":
        if inside:
            return Verdict.SUPPORTED, f"{ci}: the CI lies inside ±{r:g}{small}"
        if significant and beyond:
            return Verdict.CONTRADICTED, f"{ci}: a significant association beyond ±{r:g}"
    else:
        if inside:
            return Verdict.EQUIVALENT, f"{ci}: no association as large as ±{r:g} (the CI lies inside it){small}"
        predicted = est.rho > 0 if claim.prediction == "increase" else est.rho < 0  # type: ignore[operator]
        # an interval inside ±r whose equivalence did not survive the adjustment: inconclusive below
        if significant and predicted and not within:
            return Verdict.SUPPORTED, f"{ci}: an association in the predicted direction"
        if significant and not within:
            return Verdict.CONTRADICTED, f"{ci}: an association opposite to the prediction"
    if within:
        return (
            Verdict.INCONCLUSIVE,
            f"{ci}: the CI lies inside ±{r:g}, but the equivalence test does not survive the Holm "
            "adjustment over the family's tests of no association",
        )
    if significant and not est.has_interval:
        return (
            Verdict.INCONCLUSIVE,
            f"{ci}: a significant association of unshown size (no interval to set against ±{r:g})",
        )
    if significant:
        return (
            Verdict.INCONCLUSIVE,
            f"{ci}: a significant association, but the CI reaches both inside and beyond ±{r:g}",
        )
    return Verdict.INCONCLUSIVE, f"{ci}: neither significant nor shown smaller than ±{r:g}"


def decide_association_family(
    claims_and_estimates: Sequence[tuple[AssociationClaim, Association | None]],
) -> list[AssociationDecision]:
    """Decide every association claim of one family with Holm-adjusted p-values (the tests of
    an association among themselves, the tests of equivalence among themselves)."""
    adjusted = holm([est.p_value if est is not None else None for _, est in claims_and_estimates])
    equivalence = holm([association_equivalence_p(est, c.rho_of_interest) for c, est in claims_and_estimates])
    return [
        decide_association(c, e, p, q) for (c, e), p, q in zip(claims_and_estimates, adjusted, equivalence, strict=True)
    ]
