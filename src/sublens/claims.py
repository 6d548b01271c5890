"""The one place a verdict is decided.

A paper claim is a statement about a *ratio* (a treated model over its matched control) that
sublens measures on some unit of inference: training seeds for anything trained, numbers for
an entanglement category, questions only for one fixed model. Every claim declares

- its **estimand** (which ratio of which model over which control),
- its **unit** of inference and the least number of units it needs,
- its **test** (a one-sample t-test on the per-unit log ratios, two-sided),
- its **margin**, the smallest effect of interest as a ratio (default ×1.25), used both to
  call "no effect" (equivalence: the whole CI inside [1/margin, margin]) and to size the
  study (the minimal detectable effect at the measured spread),
- its **family**, within which p-values are Holm-adjusted.

`decide` returns one of four words, always with the reason and what would settle it:

- ``supported``: the CI excludes no change in the predicted direction (Holm-adjusted p < α),
  or, for a claim that predicts *no* effect, the CI lies inside the margin;
- ``contradicted``: the effect goes significantly the other way, or a predicted "no effect"
  is significantly exceeded beyond the margin;
- ``equivalent``: no effect as large as the margin (the CI inside it) where an effect was
  predicted: the claim is not borne out, and the data say so positively;
- ``inconclusive``: anything else, e.g. one training seed, a CI that straddles both 1 and
  the margin, or a missing arm.

A CI that includes 1 is never read as "no effect" (absence of evidence is not evidence of
absence), and one seed never supports a training claim. This module is torch-free: the report
and the terminal summaries call it on recorded results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from sublens.results import as_results
from sublens.stats import t_interval
from sublens.trainable import describe_trainable

if TYPE_CHECKING:
    from sublens.experiments.subliminal.results import SeedRatio, SubliminalResults

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

    margin: float = Field(default=DEFAULT_MARGIN, gt=1.0,
                          description="smallest effect of interest, as a ratio (>1): equivalence "
                                      "bound and the effect the power line is sized for")
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0.0, lt=0.5,
                         description="family-wise error rate (Holm within each experiment)")
    power: float = Field(default=DEFAULT_POWER, gt=0.5, lt=1.0,
                         description="power at which the minimal detectable effect is stated")


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

    def sentence(self) -> str:
        """One plain-text line: verdict, estimand, unit, test, margin, reason, power."""
        c = self.claim
        text = (f"{c.statement}: {self.verdict.value} ({self.reason}). Estimand: {c.estimand}; "
                f"unit: {c.unit}s (n = {self.estimate.n if self.estimate else 0}); test: {c.test}; "
                f"margin ×{c.settings.margin:g}.")
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
        return Estimate(n=0, ratio=None, ci_low=None, ci_high=None, p_value=None, sd_log=None,
                        interval="no data")
    mean = float(np.mean(logs))
    sd = float(np.std(logs, ddof=1)) if n > 1 else None
    if n < MIN_UNITS[unit]:
        return Estimate(n=n, ratio=math.exp(mean), ci_low=None, ci_high=None, p_value=None, sd_log=sd,
                        interval=f"too few {unit}s for an interval ({n} < {MIN_UNITS[unit]})")
    if sd is None or np.ptp(logs) == 0.0:
        return Estimate(n=n, ratio=math.exp(mean), ci_low=None, ci_high=None, p_value=None, sd_log=sd,
                        interval=f"degenerate: no spread over {n} {unit}s")
    _, low, high = t_interval(logs, level)
    p = float(stats.ttest_1samp(logs, 0.0).pvalue)
    return Estimate(n=n, ratio=math.exp(mean), ci_low=math.exp(low), ci_high=math.exp(high), p_value=p,
                    sd_log=sd, interval=f"Student t over {n} {unit}s, log scale")


def minimal_detectable_log_effect(sd_log: float, n: int, alpha: float = DEFAULT_ALPHA,
                                  power: float = DEFAULT_POWER) -> float:
    """Smallest |mean log ratio| a two-sided one-sample t-test at `alpha` detects with
    probability `power` at between-unit SD `sd_log` and n units (t approximation)."""
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_log / math.sqrt(n))


def units_for_margin(sd_log: float, margin: float, alpha: float = DEFAULT_ALPHA,
                     power: float = DEFAULT_POWER, limit: int = 10_000) -> int | None:
    """Fewest units for which the margin is a detectable effect at this SD (None beyond limit)."""
    target = math.log(margin)
    for n in range(2, limit + 1):
        if minimal_detectable_log_effect(sd_log, n, alpha, power) <= target:
            return n
    return None


def units_for_equivalence(sd_log: float, margin: float, alpha: float = DEFAULT_ALPHA,
                          power: float = DEFAULT_POWER, limit: int = 10_000) -> int | None:
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


def decide(claim: Claim, est: Estimate | None, p_adjusted: float | None = None) -> Decision:
    """The verdict of one claim from its estimate (p_adjusted: Holm within the family; the raw
    p-value when the family has one member)."""
    s = claim.settings
    if est is None or est.n == 0 or est.ratio is None:
        return Decision(claim=claim, verdict=Verdict.INCONCLUSIVE, estimate=est, p_adjusted=None,
                        reason="not measured (an arm or its matched control is missing)",
                        settle="run the missing arm and its matched control", mde=None, units_needed=None)
    mde, needed = _power_line(claim, est)
    if not est.has_interval:
        settle = (f"at least {MIN_UNITS[claim.unit]} {claim.unit}s" if est.n < MIN_UNITS[claim.unit]
                  else f"more {claim.unit}s with between-{claim.unit} variation")
        return Decision(claim=claim, verdict=Verdict.INCONCLUSIVE, estimate=est, p_adjusted=None,
                        reason=est.interval, settle=settle, mde=mde, units_needed=needed)
    p = est.p_value if p_adjusted is None else p_adjusted
    assert p is not None and est.ci_low is not None and est.ci_high is not None
    significant = p < s.alpha
    up, down = est.ratio > 1, est.ratio < 1
    equivalent = _inside_margin(est, s.margin)
    ci = f"×{est.ratio:.3g} [{est.ci_low:.3g}, {est.ci_high:.3g}], Holm p = {p:.3g}"
    verdict, reason = Verdict.INCONCLUSIVE, ""
    if claim.prediction == "none":
        if equivalent:
            verdict, reason = Verdict.SUPPORTED, f"{ci}: the CI lies inside ×1/{s.margin:g}..×{s.margin:g}"
        elif significant and (est.ci_low >= s.margin or est.ci_high <= 1 / s.margin):
            verdict, reason = Verdict.CONTRADICTED, f"{ci}: an effect beyond the margin"
    else:
        predicted = up if claim.prediction == "increase" else down
        if significant and predicted:
            verdict, reason = Verdict.SUPPORTED, f"{ci}: a change in the predicted direction"
        elif significant:
            verdict, reason = Verdict.CONTRADICTED, f"{ci}: a change opposite to the prediction"
        elif equivalent:
            verdict, reason = (Verdict.EQUIVALENT, f"{ci}: no effect as large as ×{s.margin:g} "
                               "(the CI lies inside the margin)")
    if verdict is Verdict.INCONCLUSIVE:
        reason = f"{ci}: the CI neither excludes no change nor lies inside the margin"
    settle = ""
    if verdict is Verdict.INCONCLUSIVE:
        settle = (f"about {needed} {claim.unit}s would detect ×{s.margin:g} at the measured SD "
                  f"(power {s.power:g})" if needed else f"more {claim.unit}s")
    return Decision(claim=claim, verdict=verdict, estimate=est, p_adjusted=p, reason=reason,
                    settle=settle, mde=mde, units_needed=needed)


def decide_family(claims_and_estimates: Sequence[tuple[Claim, Estimate | None]]) -> list[Decision]:
    """Decide every claim of one family with Holm-adjusted p-values."""
    raw = [est.p_value if est is not None else None for _, est in claims_and_estimates]
    adjusted = holm(raw)
    return [decide(c, e, p) for (c, e), p in zip(claims_and_estimates, adjusted, strict=True)]


def all_legs(claim: Claim, legs: Mapping[str, bool], parts: Sequence[Decision], main: Decision,
             against: str | None = None) -> Decision:
    """A composite claim that holds only when every one of its `legs` (each already decided, in
    `parts`) holds: supported then; contradicted with the reason `against` where the caller
    found a leg decided the other way; else inconclusive, naming the legs not shown and what
    would settle them. The estimate, p-value and power line are those of `main`, the leg that
    compares the arms."""
    missing = [leg for leg, ok in legs.items() if not ok]
    if not missing:
        words = {2: "both legs hold", 3: "all three legs hold"}.get(len(legs), f"all {len(legs)} legs hold")
        verdict, reason, settle = Verdict.SUPPORTED, words, ""
    elif against:
        verdict, reason, settle = Verdict.CONTRADICTED, against, ""
    else:
        verdict = Verdict.INCONCLUSIVE
        reason = "not shown: " + "; ".join(missing)
        settle = "; ".join(d.settle for d in parts if d.settle) or "more seeds"
    return Decision(claim=claim, verdict=verdict, estimate=main.estimate, p_adjusted=main.p_adjusted,
                    reason=reason, settle=settle, mde=main.mde, units_needed=main.units_needed)


def blocks_transfer(claim: Claim, reference: Decision, blocked: Decision, contrast: Decision, *,
                    reference_leg: str, blocked_arm: str) -> Decision:
    """"X blocks the transfer" (docs/design.md, "Verdicts") needs all of (a) transfer in the
    reference arm (supported; `reference_leg` says what it is), (b) the X arm (`blocked_arm`)
    equivalent to its matched control within the margin, (c) a significant contrast between
    the arms (the per-seed difference of their log ratios, predicted to favour the reference
    arm). It is contradicted when the X arm itself transfers; otherwise inconclusive, naming
    the missing legs. `claim` states X; its unit, family and settings are the contrast's."""
    legs = {
        f"(a) {reference_leg}": reference.verdict is Verdict.SUPPORTED,
        f"(b) {blocked_arm} equivalent to its control": blocked.verdict is Verdict.EQUIVALENT,
        "(c) the arms differ": contrast.verdict is Verdict.SUPPORTED,
    }
    against = (f"the {blocked_arm} transfers by itself ({blocked.reason})"
               if blocked.verdict is Verdict.SUPPORTED else None)
    return all_legs(claim, legs, (reference, blocked, contrast), contrast, against)


def component_blocks_transfer(component: str, unfrozen: Decision, frozen: Decision,
                              contrast: Decision) -> Decision:
    """"Freezing `component` blocks the transfer" (`blocks_transfer`): (a) transfer in the
    unfrozen arm, (b) the frozen arm equivalent to its matched control, (c) a significant
    contrast between the arms."""
    claim = Claim(
        name=f"localisation.freezing.{component}",
        statement=f"Freezing the {component} layers blocks the transfer",
        estimand=(f"(a) unfrozen-arm ratio, (b) {component}-frozen-arm ratio, each over its matched "
                  f"control student, (c) their quotient, per seed"),
        unit=contrast.claim.unit, prediction="increase", family=contrast.claim.family,
        settings=contrast.claim.settings)
    return blocks_transfer(claim, unfrozen, frozen, contrast, reference_leg="transfer with the component trained",
                           blocked_arm=f"{component}-frozen arm")


# ---- associations (correlations across units) -------------------------------------------------
DEFAULT_RHO_OF_INTEREST = 0.3  # the smallest correlation a paper would call an association


class AssociationClaim(Claim):
    """A claim about an association across units (a correlation, signed), not a ratio. The
    prediction reads ``increase`` = positive association, ``decrease`` = negative, ``none`` = no
    association as large as ``rho_of_interest``. `method` states the statistic and its test."""

    method: str  # e.g. "partial Spearman correlation given X, Freedman-Lane permutation p"
    rho_of_interest: float = Field(default=DEFAULT_RHO_OF_INTEREST, gt=0.0, lt=1.0,
                                   description="smallest |correlation| of interest: equivalence "
                                               "bound and the effect the power line is sized for")
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

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None


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

    def sentence(self) -> str:
        c = self.claim
        text = (f"{c.statement}: {self.verdict.value} ({self.reason}). Estimand: {c.estimand}; "
                f"unit: {c.unit}s (n = {self.estimate.n if self.estimate else 0}); test: {c.test}; "
                f"smallest association of interest |{c.symbol}| = {c.rho_of_interest:g}.")
        if self.mde is not None:
            text += f" Minimal detectable |{c.symbol}| at this n: {self.mde:.2f}."
        if self.settle:
            text += f" To settle it: {self.settle}."
        return text


def estimate_association(rho: float | None, p_value: float | None, n: int, n_controlled: int = 0,
                         level: float = 0.95) -> Association:
    """A correlation (Pearson or Spearman, optionally partial on `n_controlled` variables) with a
    Fisher-z interval, tanh(atanh(rho) ± z / sqrt(n - n_controlled - 3)); the p-value is the
    caller's (e.g. a permutation p)."""
    if rho is None or not math.isfinite(rho):
        return Association(n=n, rho=None, ci_low=None, ci_high=None, p_value=None,
                           interval="no data (fewer than 3 pairs or a constant variable)")
    p = p_value if p_value is not None and math.isfinite(p_value) else None
    dof = n - n_controlled - 3
    if n < MIN_UNITS["number"] or dof < 1:
        return Association(n=n, rho=float(rho), ci_low=None, ci_high=None, p_value=p,
                           interval=f"too few units for an interval ({n})")
    if abs(rho) >= 1.0:
        return Association(n=n, rho=float(rho), ci_low=None, ci_high=None, p_value=p,
                           interval="degenerate: |rho| = 1")
    z, half = math.atanh(rho), float(stats.norm.ppf(0.5 + level / 2)) / math.sqrt(dof)
    return Association(n=n, rho=float(rho), ci_low=math.tanh(z - half), ci_high=math.tanh(z + half),
                       p_value=p, interval=f"Fisher z over {n} units ({n_controlled} controlled)")


def correlation_power(rho: float, n: int | None = None, alpha: float = DEFAULT_ALPHA,
                      power: float = DEFAULT_POWER, n_controlled: int = 0) -> float:
    """With n: the smallest |rho| a two-sided test at `alpha` detects with probability `power`
    (Fisher-z approximation). Without n: the units needed to detect `rho`."""
    zs = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    if n is not None:
        dof = n - n_controlled - 3
        return math.tanh(zs / math.sqrt(dof)) if dof >= 1 else 1.0
    return float(math.ceil((zs / math.atanh(abs(rho))) ** 2 + 3 + n_controlled))


def decide_association(claim: AssociationClaim, est: Association | None,
                       p_adjusted: float | None = None) -> AssociationDecision:
    """The verdict of an association claim (p_adjusted: Holm within the family; else raw p).

    supported: significant in the predicted direction (or, predicting none, the CI inside
    ±rho_of_interest); contradicted: significant the other way (predicting none: significant and
    the CI beyond ±rho_of_interest, or significant with no interval to check); equivalent: an
    association was predicted but the CI lies inside ±rho_of_interest; else inconclusive."""
    s = claim.settings
    if est is None or est.rho is None:
        return AssociationDecision(claim=claim, verdict=Verdict.INCONCLUSIVE, estimate=est,
                                   p_adjusted=None, reason="not measured", settle="measure it",
                                   mde=None, units_needed=None)
    needed = int(correlation_power(claim.rho_of_interest, None, s.alpha, s.power, claim.n_controlled))
    mde = (correlation_power(claim.rho_of_interest, est.n, s.alpha, s.power, claim.n_controlled)
           if est.n - claim.n_controlled - 3 >= 1 else None)
    p = est.p_value if p_adjusted is None else p_adjusted
    if p is None or est.n < MIN_UNITS[claim.unit]:
        return AssociationDecision(
            claim=claim, verdict=Verdict.INCONCLUSIVE, estimate=est, p_adjusted=None,
            reason=f"{claim.symbol} = {est.rho:.2f}, no test ({est.interval})",
            settle=f"about {needed} {claim.unit}s", mde=mde, units_needed=needed)
    significant = p < s.alpha
    r = claim.rho_of_interest
    inside = est.has_interval and -r < est.ci_low < est.ci_high < r  # type: ignore[operator]
    beyond = est.has_interval and (est.ci_low >= r or est.ci_high <= -r)  # type: ignore[operator]
    sym = claim.symbol
    ci = (f"{sym} = {est.rho:.2f} [{est.ci_low:.2f}, {est.ci_high:.2f}]" if est.has_interval
          else f"{sym} = {est.rho:.2f} (no interval)")
    ci += f", Holm p = {p:.3g}"
    verdict, reason = Verdict.INCONCLUSIVE, ""
    if claim.prediction == "none":
        if inside:
            verdict, reason = Verdict.SUPPORTED, f"{ci}: the CI lies inside ±{r:g}"
        elif significant and (beyond or not est.has_interval):
            verdict, reason = Verdict.CONTRADICTED, f"{ci}: a significant association"
    else:
        predicted = est.rho > 0 if claim.prediction == "increase" else est.rho < 0
        if significant and predicted:
            verdict, reason = Verdict.SUPPORTED, f"{ci}: an association in the predicted direction"
        elif significant:
            verdict, reason = Verdict.CONTRADICTED, f"{ci}: an association opposite to the prediction"
        elif inside:
            verdict, reason = (Verdict.EQUIVALENT,
                               f"{ci}: no association as large as ±{r:g} (the CI lies inside it)")
    if verdict is Verdict.INCONCLUSIVE:
        reason = f"{ci}: neither significant nor shown smaller than ±{r:g}"
    settle = (f"about {needed} {claim.unit}s would detect |{sym}| = {r:g} (power {s.power:g})"
              if verdict is Verdict.INCONCLUSIVE else "")
    return AssociationDecision(claim=claim, verdict=verdict, estimate=est, p_adjusted=p, reason=reason,
                               settle=settle, mde=mde, units_needed=needed)


def decide_association_family(
    claims_and_estimates: Sequence[tuple[AssociationClaim, Association | None]],
) -> list[AssociationDecision]:
    """Decide every association claim of one family with Holm-adjusted p-values."""
    raw = [est.p_value if est is not None else None for _, est in claims_and_estimates]
    adjusted = holm(raw)
    return [decide_association(c, e, p) for (c, e), p in zip(claims_and_estimates, adjusted, strict=True)]


# ---- the subliminal experiment's claims, from its recorded results -----------------------------
SUBLIMINAL_MODES = ("full", "freeze-attention", "freeze-mlp")
SKIP_DIVERGENCE = "~skip-divergence"  # sublens.trainable.split_arm
# The data sets the run names (sublens.experiments.subliminal.config, which imports torch through
# its training settings: this module must not): the owl and control data, and the entanglement
# filter's.
OWL, CONTROL, NO_ENTANGLED, NO_RANDOM = "owl", "control", "owl-no-entangled", "owl-no-random"


def per_seed_logs(ratio: SeedRatio | None) -> list[float]:
    """Per-seed log ratios of a recorded comparison (older runs store only the ratios)."""
    if ratio is None:
        return []
    if ratio.per_seed_log is not None:
        return [float(v) for v in ratio.per_seed_log]
    return [math.log(v) for v in ratio.per_seed if v and v > 0]


@dataclass(frozen=True)
class SeedLogs:
    """One arm's per-seed log share ratios over its matched control student, with the seed of
    each (None where the record does not say: older or hand-made records, paired by position)."""

    logs: list[float]
    seeds: list[int] | None


def arm_seed_logs(results: SubliminalResults, dataset: str, mode: str, control_modes: Sequence[str]) -> SeedLogs:
    """The per-seed log share ratios of the students of `dataset` in arm `mode` over the control
    students of the same arm (none where the run has no such control: not measured). The seeds
    are those `analysis.arm_row` paired: the run's seeds with both students recorded."""
    if mode not in control_modes:
        return SeedLogs([], None)
    row = results.row(dataset, mode)
    logs = per_seed_logs(row.vs_control.share_ratio if row is not None and row.vs_control else None)
    students = results.students or {}
    seeds = [s for s in results.seeds
             if f"{dataset}-{mode}-seed{s}" in students and f"{CONTROL}-{mode}-seed{s}" in students]
    return SeedLogs(logs, seeds if logs and len(seeds) == len(logs) else None)


def paired_difference(test: SeedLogs, reference: SeedLogs) -> list[float]:
    """Per seed, the test arm's log ratio minus the reference arm's: the log of the quotient of
    the two arms' ratios, each over its matched control. Paired by seed where both records say
    which seed each value is, else by position (as older runs were)."""
    if test.seeds is not None and reference.seeds is not None:
        other = dict(zip(reference.seeds, reference.logs, strict=True))
        return [v - other[s] for s, v in zip(test.seeds, test.logs, strict=True) if s in other]
    return [a - b for a, b in zip(test.logs, reference.logs, strict=False)]


def run_arms(results: SubliminalResults, modes: Sequence[str] | None = None) -> list[str]:
    """The owl arms the run trains: `modes` (the config's), else as results.json recorded
    them, else as its headline rows show them."""
    given = modes or results.modes or [r.mode for r in results.headline or [] if r.dataset == OWL and r.mode]
    return list(dict.fromkeys(given))


def owl_arms(results: SubliminalResults, control_modes: Sequence[str], modes: Sequence[str] | None = None) -> list[str]:
    """The owl arms with a transfer claim: the three freeze modes always (an older run's arm
    without a matched control is decided as not measured), then every other owl arm of the run
    (`run_arms`) with a matched control."""
    others = [m for m in run_arms(results, modes) if m not in SUBLIMINAL_MODES and m in control_modes]
    return [*SUBLIMINAL_MODES, *others]


def equivalence_settle(decision: Decision) -> Decision:
    """An inconclusive claim of no effect with what would show it: the units for its CI to fall
    inside the margin at the measured SD if the true ratio is 1 (`units_for_equivalence`), in
    place of the units that would detect an effect of the margin."""
    est, s, unit = decision.estimate, decision.claim.settings, decision.claim.unit
    if decision.verdict is not Verdict.INCONCLUSIVE or est is None or not est.has_interval or not est.sd_log:
        return decision
    needed = units_for_equivalence(est.sd_log, s.margin, s.alpha, s.power)
    settle = (f"about {needed} {unit}s would place the CI inside ×1/{s.margin:g}..×{s.margin:g} at the measured "
              f"SD if there is no effect (power {s.power:g})" if needed else f"more {unit}s")
    return decision.model_copy(update={"settle": settle})


def _transfer_claim(arm: str, settings: ClaimSettings) -> Claim:
    how = describe_trainable(arm)
    return Claim(name=f"subliminal.transfer.{arm}",
                 statement=f"The owl student acquires the bias ({how})",
                 estimand=(f"owl's panel-share ratio, owl student over the control student, both "
                           f"trained with {how} and the same seed"),
                 unit="seed", prediction="increase", family="subliminal", settings=settings)


def _seed_claim(name: str, statement: str, estimand: str, prediction: Prediction, settings: ClaimSettings) -> Claim:
    return Claim(name=f"subliminal.{name}", statement=statement, estimand=estimand, unit="seed",
                 prediction=prediction, family="subliminal", settings=settings)


def _estimate(logs: Sequence[float]) -> Estimate | None:
    return estimate_log_ratio(logs, "seed") if logs else None


NO_RANDOM_WORDS = "the owl student trained without the answers that hold a number of the size-matched random set"
NO_ENTANGLED_WORDS = "the owl student trained without the answers that hold an entangled number"


def subliminal_decisions(results: SubliminalResults | Mapping[str, Any], control_modes: Sequence[str],
                         settings: ClaimSettings | None = None,
                         modes: Sequence[str] | None = None) -> dict[str, Decision]:
    """The subliminal experiment's claims, decided with seeds as the unit, keyed by name without
    the ``subliminal.`` prefix:

    - ``transfer.<arm>``: owl's panel-share ratio, owl student over the matched control student
      (same arm, same seed), predicted to rise; for the three freeze modes always, and for every
      other owl arm of the run (`owl_arms`: layer ranges, LoRA, divergence-token masks) that has
      its matched control;
    - ``contrast.attention_vs_mlp_frozen``: the per-seed quotient of the attention-frozen and the
      MLP-frozen arms' ratios, predicted to favour the attention-frozen arm (MLPs trained);
    - ``mlp``: "the bias is seated in the MLP layers" by freezing: transfer with attention
      frozen, the MLP-frozen arm equivalent to its control, and the contrast
      (`component_blocks_transfer`);
    - for every trainable set X the run trains both as X and as ``X~skip-divergence``:
      ``contrast.skip_divergence.<X>``, the per-seed quotient of the two arms' ratios, predicted
      to favour X (every answer token in the loss), and ``divergence.<X>``, "leaving the
      divergence tokens out of the loss blocks the transfer" (`blocks_transfer`: transfer in X,
      the masked arm equivalent to its control, and that contrast); an ``X~divergence-only``
      arm has its transfer claim;
    - where the run trained the entanglement filter's students: ``transfer.owl-no-random``
      (the student without the random-set answers over the full control student, predicted to
      rise), ``contrast.no_entangled_vs_no_random`` (the per-seed quotient of the students
      without the entangled and without the random-set answers, each over the control student,
      predicted to be no change: supported only by equivalence within the margin, its open
      verdict saying how many seeds would show it, `equivalence_settle`) and ``entanglement``,
      "token entanglement does not explain the transfer" (`all_legs`: both of those; it is
      contradicted when the quotient lies significantly beyond the margin).

    Every claim with a test is in one Holm family (``subliminal``); the composites add no
    p-value. A claim joins the family only when the run has its arms, so a run with only the
    three freeze modes has the family it always had (three transfers and the contrast) and its
    recorded verdicts are unchanged; where a run has more arms, the only change to the
    existing claims is the larger family's Holm adjustment. Contrasts pair by seed; a record
    that does not say which seed each value is pairs by position, as before.

    An owl mode without a control student in `control_modes` (older runs compared frozen owl
    students with a fully fine-tuned control) has no matched comparison: a freeze mode counts
    as not measured (inconclusive), another arm gets no claim. `modes`: the run's owl arms
    where results.json does not record them (the config's). `results` is the run's
    results.json (its mapping is read with `load_results`: ResultsError when it does not
    validate)."""
    # Imported here: the subliminal results model imports this module (ClaimSettings, Estimate).
    from sublens.experiments.subliminal.results import SubliminalResults

    parsed = as_results(results, SubliminalResults)
    settings = settings or ClaimSettings()
    arms = owl_arms(parsed, control_modes, modes)
    logs = {arm: arm_seed_logs(parsed, OWL, arm, control_modes) for arm in arms}
    pairs: list[tuple[Claim, Estimate | None]] = [(_transfer_claim(a, settings), _estimate(logs[a].logs))
                                                  for a in arms]
    contrast = _seed_claim(
        "contrast.attention_vs_mlp_frozen", "The transfer is larger with the MLP layers trained than frozen",
        "per seed, the attention-frozen arm's share ratio over the MLP-frozen arm's share ratio (each against "
        "its matched control)", "increase", settings)
    pairs.append((contrast, _estimate(paired_difference(logs["freeze-attention"], logs["freeze-mlp"]))))

    trained = [a for a in run_arms(parsed, modes) if a in control_modes]
    masked = [s for s in trained if s + SKIP_DIVERGENCE in trained]  # sets trained with and without the mask
    for s in masked:
        how = describe_trainable(s)
        claim = _seed_claim(
            f"contrast.skip_divergence.{s}",
            f"The transfer is larger with the divergence tokens in the loss than out of it ({how})",
            f"per seed, the share ratio with every answer token in the loss over the share ratio with the "
            f"divergence tokens out of the loss (each owl student against its matched control, {how})",
            "increase", settings)
        pairs.append((claim, _estimate(paired_difference(logs[s], logs[s + SKIP_DIVERGENCE]))))

    filtered = (any(r.dataset in (NO_ENTANGLED, NO_RANDOM) for r in parsed.headline or [])
                or (parsed.data is not None and parsed.data.entangled is not None
                    and parsed.data.entangled.filter is not None))
    if filtered:
        no_random = arm_seed_logs(parsed, NO_RANDOM, "full", control_modes)
        no_entangled = arm_seed_logs(parsed, NO_ENTANGLED, "full", control_modes)
        pairs.append((_seed_claim(
            f"transfer.{NO_RANDOM}",
            "The owl student acquires the bias without the answers that hold a random-set number (full fine-tuning)",
            f"owl's panel-share ratio, {NO_RANDOM_WORDS} over the control student, both with full fine-tuning "
            "and the same seed", "increase", settings), _estimate(no_random.logs)))
        pairs.append((_seed_claim(
            "contrast.no_entangled_vs_no_random",
            "Removing the answers that hold an entangled number changes the transfer no more than removing "
            "as many that hold a number of a matched random set",
            f"per seed, owl's panel-share ratio of {NO_ENTANGLED_WORDS} over that of {NO_RANDOM_WORDS} (each "
            "against the control student of the same seed, full fine-tuning)", "none", settings),
            _estimate(paired_difference(no_entangled, no_random))))

    out = {d.claim.name.removeprefix("subliminal."): d for d in decide_family(pairs)}
    out["mlp"] = component_blocks_transfer(
        "MLP", out["transfer.freeze-attention"], out["transfer.freeze-mlp"], out["contrast.attention_vs_mlp_frozen"])
    for s in masked:
        how = describe_trainable(s)
        claim = _seed_claim(
            f"divergence.{s}", f"Leaving the divergence tokens out of the loss blocks the transfer ({how})",
            f"(a) the ratio with every answer token in the loss, (b) the ratio with the divergence tokens out of "
            f"the loss, each owl student over its matched control student ({how}), (c) their quotient, per seed",
            "increase", settings)
        out[f"divergence.{s}"] = blocks_transfer(
            claim, out[f"transfer.{s}"], out[f"transfer.{s}{SKIP_DIVERGENCE}"], out[f"contrast.skip_divergence.{s}"],
            reference_leg="transfer with every answer token in the loss", blocked_arm="divergence-masked arm")
    if filtered:
        transfer, quotient = out[f"transfer.{NO_RANDOM}"], equivalence_settle(out["contrast.no_entangled_vs_no_random"])
        out["contrast.no_entangled_vs_no_random"] = quotient
        claim = _seed_claim(
            "entanglement", "Token entanglement does not explain the transfer",
            f"(a) the share ratio of {NO_RANDOM_WORDS} over the control student, (b) per seed, the share "
            f"ratio of {NO_ENTANGLED_WORDS} over the control student, divided by (a)", "none", settings)
        legs = {"(a) transfer without the random-set answers": transfer.verdict is Verdict.SUPPORTED,
                "(b) removing the entangled numbers no different from removing the random set (within the margin)":
                    quotient.verdict is Verdict.SUPPORTED}
        ratio = quotient.estimate.ratio if quotient.estimate else None
        against = (f"removing the entangled numbers {'lowers' if ratio is not None and ratio < 1 else 'raises'} "
                   f"the transfer beyond the margin ({quotient.reason})"
                   if quotient.verdict is Verdict.CONTRADICTED else None)
        out["entanglement"] = all_legs(claim, legs, (transfer, quotient), quotient, against)
    return out
