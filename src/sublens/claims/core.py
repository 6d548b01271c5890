"""The core of the claims: the verdict words, a claim and its settings, the ratio estimate
(geometric mean, Student-t CI, p-value), the power lines (minimal detectable effect, units for
the margin or for equivalence), Holm's adjustment, and `decide` / `decide_family`, which turn a
claim and its estimate into a Decision (see the package docstring for the four verdicts)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import stats

from sublens.learning import MIN_STEPS as MIN_LEARNING_STEPS
from sublens.learning import LearningCheck
from sublens.stats import t_interval

Unit = Literal["seed", "question", "number"]
Prediction = Literal["increase", "decrease", "none"]

DEFAULT_MARGIN = 1.25  # the smallest ratio a paper would call an effect (config: claims.margin)
DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.8
MIN_UNITS: dict[str, int] = {"seed": 2, "question": 5, "number": 5}  # fewer: "too few"


class Verdict(StrEnum):
    SUPPORTED = "supported"
    CONTRADICTED = "contradicted"
    EQUIVALENT = "equivalent"
    INCONCLUSIVE = "inconclusive"


class ClaimSettings(BaseModel):
    """How claims are decided; every experiment's config carries one (key ``claims``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    margin: float = Field(
        default=DEFAULT_MARGIN,
        gt=1.0,
        description="smallest effect of interest, as a ratio (>1): equivalence "
        "bound and the effect the power line is sized for",
    )
    alpha: float = Field(
        default=DEFAULT_ALPHA,
        gt=0.0,
        lt=0.5,
        description="family-wise error rate (Holm within each experiment); 0.05 only, the level of the 95% "
        "intervals the verdicts read",
    )
    power: float = Field(
        default=DEFAULT_POWER, gt=0.5, lt=1.0, description="power at which the minimal detectable effect is stated"
    )

    @field_validator("alpha")
    @classmethod
    def _alpha_matches_the_intervals(cls, alpha: float) -> float:
        return checked_alpha(alpha, "claims.alpha")


def checked_alpha(alpha: float, key: str) -> float:
    """The verdicts read 95% intervals (t, BCa, Fisher z, noncentral chi-square) beside the
    test at alpha: at another alpha the two would disagree (a 'supported' whose CI includes no
    change), so only the level every interval is built at is accepted. `key`: the config key,
    for the message."""
    if not math.isclose(alpha, DEFAULT_ALPHA):
        raise ValueError(
            f"{key} {alpha:g}: only {DEFAULT_ALPHA:g} is supported, because every interval a verdict "
            "reads is a 95% CI and a test at another level would disagree with it"
        )
    return alpha


class Claim(BaseModel):
    """What is being claimed, and on what evidence it may be decided."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # e.g. "subliminal.transfer.full"
    statement: str  # the paper's claim in words
    estimand: str  # e.g. "owl's panel-share ratio, owl student over control student, full mode"
    unit: Unit
    prediction: Prediction
    family: str  # Holm adjusts p-values within a family
    settings: ClaimSettings = Field(default_factory=ClaimSettings)

    @property
    def test(self) -> str:
        return f"one-sample t-test on per-{self.unit} log ratios (two-sided), Holm within {self.family}"


class Estimate(BaseModel):
    """A ratio estimated from per-unit log ratios: geometric mean, Student-t CI, p-value."""

    model_config = ConfigDict(frozen=True)

    n: int
    ratio: float | None  # geometric mean; None without data
    ci_low: float | None  # None when there are too few units for an interval
    ci_high: float | None
    p_value: float | None  # t-test of log ratio = 0
    sd_log: float | None  # between-unit SD of the log ratios
    interval: str  # how the interval was made, or why there is none
    # The t distribution behind the interval (standard error of the mean log ratio, degrees of
    # freedom), for the equivalence test; None in records written before they were kept.
    se_log: float | None = None
    df: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None


class Decision(BaseModel):
    """A claim's verdict with everything the text must state beside it."""

    model_config = ConfigDict(frozen=True)

    claim: Claim
    verdict: Verdict
    estimate: Estimate | None
    p_adjusted: float | None
    reason: str  # why this verdict
    settle: str  # what would settle it ("" when decided)
    mde: float | None  # minimal detectable ratio at the measured SD (power line), None if unknown
    units_needed: int | None  # units for the margin to be detectable at the measured SD
    # the equivalence test's p (Holm over the family's), where the CI lies inside the margin
    equivalence_p_adjusted: float | None = None

    def sentence(self) -> str:
        """One plain-text line: verdict, estimand, unit, test, margin, reason, power."""
        c = self.claim
        text = (
            f"{c.statement}: {self.verdict.value} ({self.reason}). Estimand: {c.estimand}; "
            f"unit: {c.unit}s (n = {self.estimate.n if self.estimate else 0}); test: {c.test}; "
            f"margin ×{c.settings.margin:g}."
        )
        if self.mde is not None:
            text += f" Minimal detectable effect at the measured SD: ×{self.mde:.2f}."
        if self.settle:
            text += f" To settle it: {self.settle}."
        return text


# ---- estimation -------------------------------------------------------------------------------
def estimate_log_ratio(log_values: Sequence[float], unit: Unit, level: float = 0.95) -> Estimate:
    """Geometric-mean ratio over units with a t-interval on the log scale (close to nominal
    coverage at 2-15 units for roughly normal log ratios, where a percentile bootstrap covers
    68-91%). Below the unit's minimum, or with zero spread, no interval: "too few"."""
    logs = [float(v) for v in log_values if v is not None and math.isfinite(v)]
    n = len(logs)
    if n == 0:
        return Estimate(n=0, ratio=None, ci_low=None, ci_high=None, p_value=None, sd_log=None, interval="no data")
    mean = float(np.mean(logs))
    sd = float(np.std(logs, ddof=1)) if n > 1 else None
    if n < MIN_UNITS[unit]:
        return Estimate(
            n=n,
            ratio=math.exp(mean),
            ci_low=None,
            ci_high=None,
            p_value=None,
            sd_log=sd,
            interval=f"too few {unit}s for an interval, {n} of at least {MIN_UNITS[unit]}",
        )
    if sd is None or np.ptp(logs) == 0.0:
        return Estimate(
            n=n,
            ratio=math.exp(mean),
            ci_low=None,
            ci_high=None,
            p_value=None,
            sd_log=sd,
            interval=f"degenerate: no spread over {n} {unit}s",
        )
    _, low, high = t_interval(logs, level)
    p = float(stats.ttest_1samp(logs, 0.0).pvalue)
    return Estimate(
        n=n,
        ratio=math.exp(mean),
        ci_low=math.exp(low),
        ci_high=math.exp(high),
        p_value=p,
        sd_log=sd,
        interval=f"Student t over {n} {unit}s, log scale",
        se_log=sd / math.sqrt(n),
        df=n - 1,
    )


def minimal_detectable_log_effect(
    sd_log: float, n: int, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER
) -> float:
    """Smallest |mean log ratio| a two-sided one-sample t-test at `alpha` detects with
    probability `power` at between-unit SD `sd_log` and n units (t approximation)."""
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_log / math.sqrt(n))


def units_for_margin(
    sd_log: float, margin: float, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER, limit: int = 10_000
) -> int | None:
    """Fewest units for which the margin is a detectable effect at this SD (None beyond limit)."""
    target = math.log(margin)
    for n in range(2, limit + 1):
        if minimal_detectable_log_effect(sd_log, n, alpha, power) <= target:
            return n
    return None


def units_for_equivalence(
    sd_log: float, margin: float, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER, limit: int = 10_000
) -> int | None:
    """Fewest units for which a claim of no effect is shown (the (1 - alpha) CI inside
    [1/margin, margin], `decide`) with probability `power` when the true ratio is 1, at this SD
    (t approximation; None beyond limit). More than `units_for_margin`: the CI must clear both
    bounds, not one."""
    target = math.log(margin)
    for n in range(2, limit + 1):
        df = n - 1
        if (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf((1 + power) / 2, df)) * sd_log / math.sqrt(n) <= target:
            return n
    return None


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error); None stays None."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p))
    adjusted: list[float | None] = [None] * len(p_values)
    m, running = len(present), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# ---- deciding ---------------------------------------------------------------------------------
def _power_line(claim: Claim, est: Estimate) -> tuple[float | None, int | None]:
    s = claim.settings
    if est.sd_log is None or est.n < 2 or not est.sd_log:
        return None, None
    mde = math.exp(minimal_detectable_log_effect(est.sd_log, est.n, s.alpha, s.power))
    return mde, units_for_margin(est.sd_log, s.margin, s.alpha, s.power)


def _inside_margin(est: Estimate, margin: float) -> bool:
    assert est.ci_low is not None and est.ci_high is not None
    return 1 / margin < est.ci_low and est.ci_high < margin


def equivalence_p(est: Estimate | None, margin: float) -> float | None:
    """The p-value of the equivalence test (two one-sided t-tests, TOST) of "the ratio lies
    beyond ×1/margin or ×margin": the larger of the two one-sided p-values on the log scale.
    Below 0.025 exactly when the 95% CI lies inside the margin; family-adjusted (Holm) in
    `decide_family`, so that a family of many nulls does not show one by chance. A record
    without the t distribution's standard error (written before it was kept) has it recovered
    from its 95% CI with n - 1 degrees of freedom. None: no interval."""
    if est is None or est.ratio is None or not est.has_interval:
        return None
    assert est.ci_low is not None and est.ci_high is not None
    se, df = est.se_log, est.df
    if se is None or df is None:
        if est.n < 2:
            return None
        df = est.n - 1
        se = (math.log(est.ci_high) - math.log(est.ci_low)) / (2 * float(stats.t.ppf(0.975, df)))
    if not se > 0:
        return None
    centre, bound = math.log(est.ratio), math.log(margin)
    above_lower = float(stats.t.sf((centre + bound) / se, df))  # H0: ratio <= 1/margin
    below_upper = float(stats.t.cdf((centre - bound) / se, df))  # H0: ratio >= margin
    return max(above_lower, below_upper)


def decide(
    claim: Claim, est: Estimate | None, p_adjusted: float | None = None, equivalence_p_adjusted: float | None = None
) -> Decision:
    """The verdict of one claim from its estimate (p_adjusted: the difference test's p, Holm
    within the family; equivalence_p_adjusted: the equivalence test's p, Holm over the family's
    equivalence tests; each the raw p-value when the family has one member)."""
    if est is None or est.n == 0 or est.ratio is None:
        return Decision(
            claim=claim,
            verdict=Verdict.INCONCLUSIVE,
            estimate=est,
            p_adjusted=None,
            reason="not measured (an arm or its matched control is missing)",
            settle="run the missing arm and its matched control",
            mde=None,
            units_needed=None,
        )
    mde, needed = _power_line(claim, est)
    if not est.has_interval:
        settle = (
            # The minimum only yields an SD; the number that decides comes from the power line on it.
            f"at least {MIN_UNITS[claim.unit]} {claim.unit}s for a between-{claim.unit} SD, then as many "
            f"{claim.unit}s as a power analysis on that SD asks for"
            if est.n < MIN_UNITS[claim.unit]
            else f"more {claim.unit}s with between-{claim.unit} variation"
        )
        return Decision(
            claim=claim,
            verdict=Verdict.INCONCLUSIVE,
            estimate=est,
            p_adjusted=None,
            reason=est.interval,
            settle=settle,
            mde=mde,
            units_needed=needed,
        )
    p = est.p_value if p_adjusted is None else p_adjusted
    assert p is not None and est.ci_low is not None and est.ci_high is not None
    p_equivalent = (
        equivalence_p(est, claim.settings.margin) if equivalence_p_adjusted is None else equivalence_p_adjusted
    )
    verdict, reason = _verdict(claim, est, p, p_equivalent)
    settle = ""
    if verdict is Verdict.INCONCLUSIVE:
        settle = _what_decides(claim, est, needed)
    return Decision(
        claim=claim,
        verdict=verdict,
        estimate=est,
        p_adjusted=p,
        reason=reason,
        settle=settle,
        mde=mde,
        units_needed=needed,
        equivalence_p_adjusted=p_equivalent if _inside_margin(est, claim.settings.margin) else None,
    )


def _what_decides(claim: Claim, est: Estimate, needed: int | None) -> str:
    """What would settle an inconclusive claim. The power line's count, where the run has fewer
    units than it; where it already has as many (the estimate sits near a boundary, e.g. ×1.31
    [1.18, 1.46] against a ×1.25 margin), the units that would narrow the CI to one side of every
    boundary it crosses if the estimate held: asking for fewer units than were measured says nothing."""
    s = claim.settings
    if _inside_margin(est, s.margin):  # inside, but not after the family's adjustment
        for_equivalence = units_for_equivalence(est.sd_log, s.margin, s.alpha, s.power) if est.sd_log else None
        if for_equivalence and for_equivalence > est.n:
            return (
                f"at least {for_equivalence} {claim.unit}s: the number that shows equivalence at the measured SD "
                f"if there is no effect (power {s.power:g}) for one test alone, more for the family's adjustment"
            )
        return f"more {claim.unit}s: a narrower CI, whose equivalence test survives the family's adjustment"
    if needed and needed > est.n:
        return power_settle(claim, needed)
    deciding = units_to_decide(est, claim.settings.margin, claim.settings.alpha)
    if deciding:
        return (
            f"about {deciding} {claim.unit}s would decide it if the estimate held (its CI clear of ×1 "
            f"and ×{claim.settings.margin:g})"
        )
    return f"more {claim.unit}s"


def units_to_decide(est: Estimate, margin: float, alpha: float = DEFAULT_ALPHA, limit: int = 100_000) -> int | None:
    """Fewest units at which the t-interval around the present estimate, at the present SD, no
    longer crosses 1 or either margin bound (None: no SD, no crossing, or beyond `limit`)."""
    if est.ratio is None or not est.sd_log or est.ci_low is None or est.ci_high is None:
        return None
    centre, low, high = math.log(est.ratio), math.log(est.ci_low), math.log(est.ci_high)
    crossed = [b for b in (0.0, math.log(margin), -math.log(margin)) if low < b < high]
    if not crossed:
        return None
    distance = min(abs(centre - b) for b in crossed)
    sd = est.sd_log

    def narrow_enough(n: int) -> bool:
        return float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n) < distance

    low_n, high_n = max(est.n, 2), limit  # the half-width falls with n: bisect, not count
    if distance == 0 or not narrow_enough(high_n):
        return None
    while low_n < high_n:
        middle = (low_n + high_n) // 2
        low_n, high_n = (low_n, middle) if narrow_enough(middle) else (middle + 1, high_n)
    return low_n


def power_settle(claim: Claim, needed: int) -> str:
    """What settles an inconclusive claim when the power line already sized it."""
    s = claim.settings
    return f"about {needed} {claim.unit}s would detect ×{s.margin:g} at the measured SD (power {s.power:g})"


def _verdict(claim: Claim, est: Estimate, p: float, p_equivalent: float | None) -> tuple[Verdict, str]:
    """The verdict word and its reason, from the (Holm-adjusted) p of the difference test, the
    (Holm-adjusted) p of the equivalence test and the ratio's interval against the margin
    ×1/margin..×margin. No effect needs both: the 95% CI inside the margin and the equivalence
    test significant after the family's adjustment (None: no test could be made, the CI alone)."""
    margin, alpha = claim.settings.margin, claim.settings.alpha
    assert est.ratio is not None and est.ci_low is not None and est.ci_high is not None
    significant, inside = p < alpha, _inside_margin(est, margin)
    equivalent = inside and (p_equivalent is None or p_equivalent < alpha)
    ci = f"×{est.ratio:.3g} [{est.ci_low:.3g}, {est.ci_high:.3g}], Holm p = {p:.3g}"
    if p_equivalent is not None and inside:  # where the equivalence test decides
        ci += f", equivalence Holm p = {p_equivalent:.3g}"
    # A CI wholly inside the margin is read the same way whatever was predicted: no effect of
    # interest. A significant but smaller change is said as such, never as support for an effect
    # (the same ×1.05 [1.03, 1.07] cannot support both "it transfers" and "it does not").
    real_but_small = ", though the CI excludes no change: a difference smaller than the margin" if significant else ""
    if claim.prediction == "none":
        if equivalent:
            return Verdict.SUPPORTED, f"{ci}: the CI lies inside ×1/{margin:g}..×{margin:g}{real_but_small}"
        if significant and (est.ci_low >= margin or est.ci_high <= 1 / margin):
            return Verdict.CONTRADICTED, f"{ci}: an effect beyond the margin"
    else:
        if equivalent:
            return Verdict.EQUIVALENT, (
                f"{ci}: no effect as large as ×{margin:g} (the CI lies inside the margin){real_but_small}"
            )
        predicted = est.ratio > 1 if claim.prediction == "increase" else est.ratio < 1
        # a CI inside the margin whose equivalence did not survive the adjustment is no more
        # support (or refutation) than it was before: it falls through to inconclusive
        if significant and predicted and not inside:
            return Verdict.SUPPORTED, f"{ci}: a change in the predicted direction"
        if significant and not inside:
            return Verdict.CONTRADICTED, f"{ci}: a change opposite to the prediction"
    if inside:
        return Verdict.INCONCLUSIVE, (
            f"{ci}: the CI lies inside ×1/{margin:g}..×{margin:g}, but the equivalence test does not survive "
            "the Holm adjustment over the family's tests of no effect"
        )
    return Verdict.INCONCLUSIVE, f"{ci}: {_undecided(est, significant, margin)}"


def _undecided(est: Estimate, significant: bool, margin: float) -> str:
    """Why an inconclusive verdict, true to the interval: a CI that excludes 1 is never said to
    include it (an equivalence claim can see a real difference that may still lie inside the
    margin; the Holm-adjusted p can miss α while the unadjusted CI excludes 1)."""
    assert est.ci_low is not None and est.ci_high is not None
    if not (est.ci_low > 1 or est.ci_high < 1):
        return "the CI neither excludes no change nor lies inside the margin"
    if significant:
        return (
            f"a difference, but the CI reaches both inside and beyond ×{margin:g}: neither an effect beyond "
            "the margin nor one inside it"
        )
    return "the CI excludes no change, but not after the Holm adjustment, and it does not lie inside the margin"


def decide_family(claims_and_estimates: Sequence[tuple[Claim, Estimate | None]]) -> list[Decision]:
    """Decide every claim of one family with Holm-adjusted p-values: the tests of a difference
    adjusted among themselves, and the tests of equivalence among themselves (a family of ten
    nulls read from ten unadjusted CIs would show one no-effect by chance about as often as
    ten tests would show one effect)."""
    adjusted = holm([est.p_value if est is not None else None for _, est in claims_and_estimates])
    equivalence = holm([equivalence_p(est, c.settings.margin) for c, est in claims_and_estimates])
    return [decide(c, e, p, q) for (c, e), p, q in zip(claims_and_estimates, adjusted, equivalence, strict=True)]


# ---- what a null about a part of the model needs: a bias large against the margin -------------
class RatioInterval(Protocol):
    """A ratio with its interval, as every results model records one (bounds None: none)."""

    @property
    def ratio(self) -> float | None: ...
    @property
    def ci_low(self) -> float | None: ...
    @property
    def ci_high(self) -> float | None: ...


def bias_too_small(bias: RatioInterval | None, margin: float, whose: str) -> str | None:
    """Why a null about a part of a biased model ("pruning leaves the bias", "the LM head carries
    none of it") cannot be read, or None. The margin is a ratio, not a share of the bias: where
    the whole bias is ×1.15, a change inside ×1/1.25..×1.25 can be all of it. Only a bias shown
    beyond the margin squared (its CI's lower bound) leaves, after a change inside the margin,
    a bias that is itself at least the margin: at most half of it, on the log scale, in the part.
    `bias`: the biased model over its control (None: not measured); `whose`: the same in words."""
    ratio, ci_low, ci_high = (bias.ratio, bias.ci_low, bias.ci_high) if bias is not None else (None, None, None)
    bound = margin**2
    if ratio is None or ci_low is None or ci_high is None:
        return f"no interval for the bias itself ({whose}), so a change inside the margin cannot be set against it"
    if ci_low > bound:
        return None
    return (
        f"the bias itself, {whose}, ×{ratio:.3g} [{ci_low:.3g}, {ci_high:.3g}], is not shown beyond "
        f"×{bound:.3g} (the margin squared), so a change inside ×1/{margin:g}..×{margin:g} could be most of it"
    )


def bias_settle(margin: float) -> str:
    """What settles a null blocked by `bias_too_small`."""
    return (
        f"a biased model whose bias over its control is shown beyond ×{margin**2:.3g} (the margin squared), "
        "or a smaller margin (claims.margin)"
    )


def unless_bias_to_lose(decision: Decision, blocker: str | None, margin: float) -> Decision:
    """A null about a part of the model stands only where `bias_too_small` found no blocker;
    otherwise inconclusive, saying why, the estimate kept."""
    if blocker is None or not is_null(decision):
        return decision
    return decision.model_copy(
        update={
            "verdict": Verdict.INCONCLUSIVE,
            "reason": f"{blocker}; the estimate: {decision.reason}",
            "settle": bias_settle(margin),
        }
    )


# ---- the manipulation check a null needs (sublens.learning) ----------------------------------


def is_null(decision: Decision) -> bool:
    """A verdict that reads as "no effect": equivalence where an effect was predicted, or a
    predicted no-change borne out."""
    return decision.verdict is Verdict.EQUIVALENT or (
        decision.verdict is Verdict.SUPPORTED and decision.claim.prediction == "none"
    )


def unless_learned(decision: Decision, check: LearningCheck | None) -> Decision:
    """A null stands only where the students behind it are shown to have learned their data:
    students that did not move cannot carry a trait, so their null says nothing about where it
    sits. Otherwise the decision is inconclusive, saying why and what would settle it. `check`
    None: the students' curves were all too short to read (or none was recorded)."""
    if not is_null(decision) or (check is not None and check.learned):
        return decision
    what = f"no loss curve of at least {MIN_LEARNING_STEPS} steps" if check is None else check.words()
    return decision.model_copy(
        update={
            "verdict": Verdict.INCONCLUSIVE,
            "reason": f"the students were not shown to learn their data ({what}; sublens.learning); "
            f"the estimate: {decision.reason}",
            "settle": "train until the loss falls (more steps or a higher rate), then measure again",
        }
    )
