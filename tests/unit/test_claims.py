"""The claims module: interval coverage and false-positive rates by simulation at the sizes the
presets use, Holm against hand values, and a verdict table on synthetic results with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sublens.claims import (
    Claim,
    ClaimSettings,
    Estimate,
    Unit,
    Verdict,
    component_blocks_transfer,
    decide,
    decide_family,
    equivalence_p,
    estimate_log_ratio,
    holm,
    minimal_detectable_log_effect,
    units_for_margin,
)
from sublens.claims.core import units_to_decide
from sublens.stats import log_ratio_interval, summarize

# Sizes the presets use: numbers per entanglement category (paper chain k=4, quick k=15),
# preference questions (25), training seeds (3 to 5).
SIZES = [3, 4, 5, 15, 25]
TRIALS = 2000


def coverage(sampler: object, n: int, true_mean: float, trials: int = TRIALS, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        sample = sampler(rng, n)  # type: ignore[operator]
        _, low, high = log_ratio_interval(sample)
        hits += low <= true_mean <= high
    return hits / trials


@pytest.mark.parametrize("n", SIZES)
def test_log_ratio_interval_covers_at_the_preset_sizes(n: int) -> None:
    """Normal log ratios (what a ratio of positive quantities gives after log) with an effect of
    ×1.4: the 95% t-interval covers at least 93% at every size used."""
    effect = math.log(1.4)
    assert coverage(lambda rng, k: rng.normal(effect, 0.3, k), n, effect) >= 0.93


@pytest.mark.parametrize("n", [15, 25])
def test_log_ratio_interval_covers_with_heavy_tails(n: int) -> None:
    """Per-question log ratios have heavier tails than normal (t with 5 df): still >= 93%."""
    effect = math.log(0.8)
    assert coverage(lambda rng, k: effect + 0.3 * rng.standard_t(5, k), n, effect) >= 0.93


def test_percentile_bootstrap_undercovers_where_t_does_not() -> None:
    """Why the verdicts no longer rest on the percentile bootstrap: at 4 numbers it covers about
    75%, while the t-interval holds its 95% (the reason for the change, kept as a fact)."""
    rng = np.random.default_rng(3)
    hits = 0
    trials = 400
    for trial in range(trials):
        sample = rng.normal(0.0, 1.0, 4)
        result = stats.bootstrap(
            (sample,),
            np.mean,
            method="percentile",
            n_resamples=500,
            random_state=np.random.default_rng(trial),
            vectorized=True,
        )
        hits += result.confidence_interval.low <= 0.0 <= result.confidence_interval.high
    assert hits / trials < 0.85
    assert coverage(lambda r, k: r.normal(0.0, 1.0, k), 4, 0.0, trials=400, seed=3) >= 0.93


def level_coverage(sampler: object, truth: float, method: str, n: int = 25, trials: int = 400) -> float:
    rng = np.random.default_rng(5)
    hits = 0
    for trial in range(trials):
        s = summarize(sampler(rng, n), seed=trial, n_resamples=1000, method=method)  # type: ignore[operator,arg-type]
        hits += s["ci_low"] <= truth <= s["ci_high"]
    return hits / trials


def test_level_intervals_over_questions() -> None:
    """Levels (P(owl), share) over 25 questions describe one model; no verdict rests on them.
    The default t-interval covers >= 93% for near-normal values, where BCa gives ~91%; strongly
    skewed values (lognormal, sigma 0.5) undercover under both (documented bound), which is why
    verdicts use t on log ratios."""
    normal = lambda rng, k: rng.normal(0.1, 0.03, k)  # noqa: E731
    skewed = lambda rng, k: rng.lognormal(0.0, 0.5, k)  # noqa: E731
    assert level_coverage(normal, 0.1, "t") >= 0.93
    assert level_coverage(normal, 0.1, "bca") < level_coverage(normal, 0.1, "t")
    assert level_coverage(skewed, math.exp(0.125), "t") >= 0.90


def claim(prediction: str = "increase", unit: str = "seed", margin: float = 1.25) -> Claim:
    return Claim(
        name="test",
        statement="the owl student acquires the bias",
        estimand="share ratio, owl student over matched control student",
        unit=unit,
        prediction=prediction,
        family="test",  # type: ignore[arg-type]
        settings=ClaimSettings(margin=margin),
    )


@pytest.mark.parametrize("n", [3, 5])
def test_false_positive_rate_under_the_null(n: int) -> None:
    """No effect, n seeds: 'supported' at most at the one-sided 2.5% (+ simulation noise), and
    never 'supported' for a claim of no effect that is wrong by far."""
    rng = np.random.default_rng(n)
    verdicts = [decide(claim(), estimate_log_ratio(rng.normal(0.0, 0.2, n), "seed")).verdict for _ in range(1000)]
    rate = np.mean([v is Verdict.SUPPORTED for v in verdicts])
    assert rate <= 0.04  # 0.025 expected; 1000 draws put the 99.9% bound near 0.04
    # an equivalence claim at a true effect of x2 (far outside the margin) is never supported
    wrong = [
        decide(claim("none"), estimate_log_ratio(rng.normal(math.log(2), 0.2, n), "seed")).verdict for _ in range(500)
    ]
    assert not any(v is Verdict.SUPPORTED for v in wrong)


def test_holm_against_hand_values() -> None:
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, max(3*0.02, .04), max(2*0.03, .06), max(1*0.5, .06)
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.3, None]) == [0.3, None]
    assert holm([0.6, 0.6, 0.6]) == [1.0, 1.0, 1.0]


def test_power_line_matches_a_noncentral_t_power() -> None:
    """At the minimal detectable effect the test's power is about 0.8 (noncentral t)."""
    sd, n = 0.3, 6
    mde = minimal_detectable_log_effect(sd, n)
    crit = stats.t.ppf(0.975, n - 1)
    power = 1 - stats.nct.cdf(crit, n - 1, mde / (sd / math.sqrt(n)))
    assert power == pytest.approx(0.8, abs=0.03)
    needed = units_for_margin(sd, 1.25)
    assert needed is not None
    assert minimal_detectable_log_effect(sd, needed) <= math.log(1.25) < minimal_detectable_log_effect(sd, needed - 1)


# ---- the verdict table -------------------------------------------------------------------------
def est(logs: list[float], unit: Unit = "seed") -> Estimate:
    return estimate_log_ratio(logs, unit)


def test_one_seed_never_supports() -> None:
    d = decide(claim(), est([math.log(3.0)]))
    assert d.verdict is Verdict.INCONCLUSIVE and "too few seeds" in d.reason
    assert "2 seeds" in d.settle


def test_alpha_is_the_level_of_the_intervals_the_verdicts_read() -> None:
    """At alpha 0.10 a t-test on ×1.17 [0.956, 1.42] (95%) gives p = 0.099: 'supported' with a CI
    that includes 1. The intervals are 95%, so only alpha 0.05 is accepted."""
    assert ClaimSettings().alpha == 0.05
    for alpha in (0.01, 0.1):
        with pytest.raises(ValueError, match="only 0.05 is supported"):
            ClaimSettings(alpha=alpha)
    from sublens.experiments.mechanistic import MechanisticConfig  # its own key, the same rule

    with pytest.raises(ValueError, match="alpha 0.1: only 0.05 is supported"):
        MechanisticConfig.model_validate({"alpha": 0.1})


def test_zero_spread_is_no_interval() -> None:
    d = decide(claim(), est([0.2, 0.2, 0.2]))
    assert d.verdict is Verdict.INCONCLUSIVE and d.estimate is not None and not d.estimate.has_interval


def test_clear_effect_supported_opposite_contradicted_tight_null_equivalent() -> None:
    up = decide(claim(), est([0.40, 0.45, 0.50, 0.42]))
    assert up.verdict is Verdict.SUPPORTED and up.mde is not None and up.mde > 1
    down = decide(claim(), est([-0.40, -0.45, -0.50, -0.42]))
    assert down.verdict is Verdict.CONTRADICTED
    flat = decide(claim(), est([0.01, -0.02, 0.015, -0.01, 0.0]))
    assert flat.verdict is Verdict.EQUIVALENT
    wide = decide(claim(), est([0.5, -0.4, 0.3]))
    assert wide.verdict is Verdict.INCONCLUSIVE and "seeds" in wide.settle
    # a claim of no effect: equivalence supports it, a large effect contradicts it
    assert decide(claim("none"), est([0.01, -0.02, 0.015, -0.01, 0.0])).verdict is Verdict.SUPPORTED
    assert decide(claim("none"), est([0.9, 1.0, 1.1, 0.95])).verdict is Verdict.CONTRADICTED
    assert decide(claim("none"), est([0.5, -0.4, 0.3])).verdict is Verdict.INCONCLUSIVE


def test_holm_can_withdraw_a_lone_significant_result() -> None:
    borderline = est([0.30, 0.45, 0.05, 0.35, 0.10])  # raw p ~ 0.02, the CI reaching beyond ×1.25
    assert decide(claim(), borderline).verdict is Verdict.SUPPORTED
    others = [est([0.1, -0.1, 0.05, -0.05, 0.0]) for _ in range(4)]
    family = decide_family([(claim(), borderline)] + [(claim(), e) for e in others])
    assert family[0].verdict is not Verdict.SUPPORTED and family[0].p_adjusted is not None
    assert family[0].p_adjusted > (borderline.p_value or 0)


def freezing_case(unfrozen: list[float], frozen: list[float]) -> Verdict:
    contrast = [u - f for u, f in zip(unfrozen, frozen, strict=True)]
    return component_blocks_transfer(
        "MLP", decide(claim(), est(unfrozen)), decide(claim(), est(frozen)), decide(claim(), est(contrast))
    ).verdict


def test_mlp_claim_needs_all_three_legs() -> None:
    transfer = [0.50, 0.45, 0.55, 0.48, 0.52]
    # the MLP-frozen arm flat but with a wide CI: absence of evidence -> inconclusive
    assert freezing_case(transfer, [0.3, -0.25, 0.2, -0.3, 0.1]) is Verdict.INCONCLUSIVE
    # both frozen arms equal to the unfrozen one: the MLP-frozen arm transfers -> contradicted
    assert freezing_case(transfer, transfer) is Verdict.CONTRADICTED
    # transfer, MLP-frozen arm equivalent to its control, and a clear contrast -> supported
    assert freezing_case(transfer, [0.01, -0.01, 0.02, -0.015, 0.0]) is Verdict.SUPPORTED
    # one seed of everything -> never supported
    assert freezing_case([0.5], [0.0]) is Verdict.INCONCLUSIVE


def test_the_sentence_states_estimand_unit_test_and_margin() -> None:
    text = decide(claim(), est([0.5, -0.4, 0.3])).sentence()
    for part in (
        "inconclusive",
        "Estimand: share ratio",
        "unit: seeds (n = 3)",
        "t-test",
        "margin ×1.25",
        "To settle it",
    ):
        assert part in text


def _estimate(ratio: float, low: float, high: float, p: float) -> Estimate:
    return Estimate(n=15, ratio=ratio, ci_low=low, ci_high=high, p_value=p, sd_log=0.2, interval="Student t")


def test_an_inconclusive_reason_never_says_a_ci_includes_1_when_it_does_not() -> None:
    """Seen in a demo: 'as much as' (equivalence) with ×1.31 [1.18, 1.46], p = 0.0003 was said to
    have a CI that 'neither excludes no change nor lies inside the margin'."""
    same = Claim(name="eq", statement="as much as", estimand="r", unit="number", prediction="none", family="f")
    straddling = decide(same, _estimate(1.31, 1.18, 1.46, 0.0003))
    assert straddling.verdict is Verdict.INCONCLUSIVE
    assert "a difference, but the CI reaches both inside and beyond ×1.25" in straddling.reason
    assert "neither excludes no change" not in straddling.reason
    rise = Claim(name="up", statement="raises", estimand="r", unit="number", prediction="increase", family="f")
    unadjusted = decide(rise, _estimate(1.19, 1.05, 1.35, 0.03), p_adjusted=0.15)  # Holm takes it over α
    assert unadjusted.verdict is Verdict.INCONCLUSIVE
    assert "the CI excludes no change, but not after the Holm adjustment" in unadjusted.reason
    wide = decide(rise, _estimate(1.11, 0.9, 1.37, 0.3))
    assert wide.reason.endswith("the CI neither excludes no change nor lies inside the margin")


def test_what_settles_a_claim_never_asks_for_fewer_units_than_it_has() -> None:
    """×1.31 [1.18, 1.46] over 15 numbers against a ×1.25 margin: the power line's 'about 9 numbers
    detect ×1.25' cannot settle it; the numbers that would put the CI on one side of ×1.25 can."""
    same = Claim(name="eq", statement="as much as", estimand="r", unit="number", prediction="none", family="f")
    est = _estimate(1.31, 1.18, 1.46, 0.0003)
    decision = decide(same, est)
    assert decision.units_needed is not None and decision.units_needed <= est.n
    n = units_to_decide(est, 1.25)
    assert n is not None and n > est.n
    assert f"about {n} numbers would decide it if the estimate held" in decision.settle

    def half(k: int) -> float:  # the t-interval's half-width in logs at k units, the same SD
        return float(stats.t.ppf(0.975, k - 1)) * 0.2 / math.sqrt(k)

    distance = math.log(1.31) - math.log(1.25)
    assert half(n) < distance <= half(n - 1)
    # a claim short of the power line's units still gets the power line's count
    short = decide(same, Estimate(n=4, ratio=1.1, ci_low=0.7, ci_high=1.7, p_value=0.5, sd_log=0.3, interval="t"))
    assert short.units_needed is not None and short.units_needed > 4
    assert short.settle.startswith(f"about {short.units_needed} numbers would detect ×1.25")


def test_a_change_smaller_than_the_margin_is_no_effect_of_interest() -> None:
    """The LoRA r = 8 arm measured ×1.051 [1.034, 1.069] over 3 seeds (p = 0.006): a real rise, but
    the whole CI lies below the smallest effect of interest. The same data must not support both
    "it transfers" and "it does not": the directional claim is `equivalent`, the no-effect claim
    `supported`, and both reasons say the CI excludes no change."""
    rise = Claim(name="up", statement="transfer", estimand="r", unit="seed", prediction="increase", family="f")
    same = Claim(name="none", statement="no change", estimand="r", unit="seed", prediction="none", family="f")
    seeds = [math.log(1.054), math.log(1.043), math.log(1.057)]
    small = decide(rise, estimate_log_ratio(seeds, "seed"))
    assert small.estimate is not None and small.estimate.p_value is not None and small.estimate.p_value < 0.05
    assert small.verdict is Verdict.EQUIVALENT
    assert small.reason.endswith(
        "no effect as large as ×1.25 (the CI lies inside the margin), though the CI excludes no change: "
        "a difference smaller than the margin"
    )
    none = decide(same, estimate_log_ratio(seeds, "seed"))
    assert none.verdict is Verdict.SUPPORTED and none.reason.endswith("a difference smaller than the margin")
    # a significant rise whose CI reaches beyond the margin is support, said without the caveat
    large = decide(rise, estimate_log_ratio([math.log(1.6), math.log(1.5), math.log(1.7)], "seed"))
    assert large.verdict is Verdict.SUPPORTED and large.reason.endswith("a change in the predicted direction")
    # a non-significant CI inside the margin: equivalent, without the caveat
    flat = decide(rise, estimate_log_ratio([math.log(1.01), math.log(0.99), math.log(1.02), math.log(0.98)], "seed"))
    assert flat.verdict is Verdict.EQUIVALENT and flat.reason.endswith("(the CI lies inside the margin)")


# ---- equivalence: two one-sided tests, Holm-adjusted over the family's nulls -----------------


def test_equivalence_p_is_two_one_sided_t_tests() -> None:
    """The equivalence p against scipy's one-sided t-tests on the shifted log ratios, and below
    0.025 exactly when the 95% CI lies inside the margin."""
    rng = np.random.default_rng(3)
    bound = math.log(1.25)
    for _ in range(200):
        logs = rng.normal(rng.uniform(-0.3, 0.3), rng.uniform(0.02, 0.2), int(rng.integers(3, 8)))
        e = est(list(logs))
        above = stats.ttest_1samp(logs, -bound, alternative="greater").pvalue
        below = stats.ttest_1samp(logs, bound, alternative="less").pvalue
        p = equivalence_p(e, 1.25)
        assert p == pytest.approx(max(above, below), rel=1e-9, abs=1e-12)
        assert e.ci_low is not None and e.ci_high is not None
        assert (p < 0.025) == (e.ci_low > 1 / 1.25 and e.ci_high < 1.25)


def test_equivalence_p_of_an_old_record_is_recovered_from_its_ci() -> None:
    e = est([0.05, -0.02, 0.08, 0.01])
    old = e.model_copy(update={"se_log": None, "df": None})
    assert equivalence_p(old, 1.25) == pytest.approx(equivalence_p(e, 1.25), rel=1e-9)
    assert equivalence_p(est([0.1]), 1.25) is None  # no interval, no test


def test_a_family_of_nulls_is_adjusted_for_its_size() -> None:
    """A null just inside the margin (95% CI inside, raw equivalence p ~0.02) stands alone and
    beside one other claim, but not among five whose other members are far from equivalence:
    Holm then asks for p < 0.01 at the first step."""
    near = est([0.19, 0.04, 0.15, 0.02, 0.17])  # ×1.12 [1.02, 1.24]: equivalence p 0.018
    p = equivalence_p(near, 1.25)
    assert p is not None and 0.01 < p < 0.025
    assert decide(claim(), near).verdict is Verdict.EQUIVALENT
    wide = est([0.6, -0.5, 0.4])
    assert decide_family([(claim(), near), (claim(), wide)])[0].verdict is Verdict.EQUIVALENT
    family = decide_family([(claim(), near)] + [(claim(), wide)] * 4)
    d = family[0]
    assert d.verdict is Verdict.INCONCLUSIVE
    assert "does not survive the Holm adjustment" in d.reason and "equivalence Holm p" in d.reason
    assert "narrower CI" in d.settle
    # the same for a claim that predicts no effect: no longer supported
    assert decide_family([(claim("none"), near)] + [(claim(), wide)] * 4)[0].verdict is Verdict.INCONCLUSIVE


def test_a_significant_change_inside_the_margin_is_never_support() -> None:
    """×1.16 [1.08, 1.25): significant (p 0.004) and inside the margin, equivalence p 0.02 alone.
    Among four wide claims its equivalence does not survive Holm (0.02 x 5) while its difference
    test does (0.004 x 5): the CI inside the margin must not then read as support for a rise,
    nor, predicted the other way, as a refutation."""
    inside = est([0.08, 0.12, 0.15, 0.18, 0.22])
    assert inside.ci_low is not None and inside.ci_high is not None and 1 < inside.ci_low < inside.ci_high < 1.25
    wide = est([0.6, -0.5, 0.4])
    for prediction in ("increase", "decrease"):
        d = decide_family([(claim(prediction), inside)] + [(claim(), wide)] * 4)[0]
        assert d.p_adjusted is not None and d.p_adjusted < 0.05
        assert d.verdict is Verdict.INCONCLUSIVE and "does not survive the Holm adjustment" in d.reason
    assert decide(claim(), inside).verdict is Verdict.EQUIVALENT  # alone, the equivalence stands


def test_false_equivalence_across_a_family_is_held_to_alpha() -> None:
    """Five claims whose true ratio sits on the margin (×1.25), four seeds each: the chance that
    any is called 'no effect' is held near α by the family's adjustment, and exceeds it when each
    CI is read alone (simulation, 1,000 families)."""
    rng = np.random.default_rng(8)
    adjusted = alone = 0
    families = 1000
    for _ in range(families):
        members = [(claim(), est(list(rng.normal(math.log(1.25), 0.03, 4)))) for _ in range(5)]
        adjusted += any(d.verdict is Verdict.EQUIVALENT for d in decide_family(members))
        alone += any(decide(c, e).verdict is Verdict.EQUIVALENT for c, e in members)
    assert adjusted / families <= 0.05 + 0.02  # α plus simulation noise (3 SD at 1,000 families)
    assert alone / families > 0.08  # five unadjusted reads, each at 2.5%: 11.4% measured
