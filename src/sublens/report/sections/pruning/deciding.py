"""The pruning claims, decided in `sublens.claims` from the recorded numbers: survival (a
claim of no effect on the base-controlled retention at the claim fraction) and entropy vs
random (a Monte Carlo rank test among the random draws), Holm within the family ``pruning``,
each blocked where the pruned models are degraded or the base control is missing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from sublens.claims import (
    Claim,
    ClaimSettings,
    Decision,
    Estimate,
    Verdict,
    bias_too_small,
    decide,
    estimate_log_ratio,
    holm,
    unless_bias_to_lose,
)
from sublens.experiments.pruning.results import PruningResults, Step
from sublens.report.sections.pruning.reading import (
    FAMILY,
    NO_BASE,
    NO_BASE_SETTLE,
    PAPER_KEPT,
    _controlled,
    _step,
    bound_of,
    claim_fraction,
    claim_settings,
    damage,
    draw_damage,
    inside_bound,
    last_inside,
)
from sublens.results import as_results


# ---- claims ---------------------------------------------------------------------------------
def rank_pvalue(observed: float, draws: Sequence[float]) -> float:
    """Two-sided Monte Carlo rank p-value of `observed` among R exchangeable draws under the
    null: 2 min(1 + #{draws <= observed}, 1 + #{draws >= observed}) / (R + 1), capped at 1.
    The smallest attainable value is 2 / (R + 1)."""
    values = np.asarray(draws, dtype=float)
    if values.size == 0:
        return float("nan")
    low = 1 + int(np.sum(values <= observed))
    high = 1 + int(np.sum(values >= observed))
    return min(1.0, 2 * min(low, high) / (values.size + 1))


def draws_needed(alpha: float, family_size: int) -> int:
    """Fewest draws for which the smallest two-sided rank p, Holm-adjusted in the worst case
    (x family_size), falls below alpha."""
    r = 1
    while 2 * family_size / (r + 1) >= alpha:
        r += 1
    return r


class RankClaim(Claim):
    """A claim decided by a rank test among random draws (its unit is a draw, its test not a t-test)."""

    unit: Literal["draw"] = "draw"  # type: ignore[assignment]

    @property
    def test(self) -> str:
        return (
            "two-sided Monte Carlo rank test of the entropy criterion's retention among the random "
            f"draws' (p = 2 min(rank, R + 1 - rank) / (R + 1)), Holm within {self.family}"
        )


def survival_claim(fraction: float, settings: ClaimSettings) -> Claim:
    pruned = round(100 * (1 - fraction))
    return Claim(
        name="pruning.survival",
        statement=f"The bias survives pruning {pruned}% of the attention heads (entropy criterion)",
        estimand=(
            f"base-controlled panel-share retention at {round(100 * fraction)}% of heads kept: per "
            "question, log(owl share of the pruned biased model / of the base model with the same "
            "heads pruned) minus the same log ratio of the unpruned models"
        ),
        unit="question",
        prediction="none",
        family=FAMILY,
        settings=settings,
    )


def rank_claim(fraction: float, settings: ClaimSettings) -> RankClaim:
    return RankClaim(
        name="pruning.entropy_vs_random",
        statement=(
            "Entropy-ranked pruning retains more of the bias than random pruning of as many heads "
            f"({round(100 * fraction)}% kept)"
        ),
        estimand=(
            "the entropy criterion's base-controlled panel-share retention (geometric mean over "
            "questions) against that of each random draw of as many heads inside the degradation bound"
        ),
        prediction="increase",
        family=FAMILY,
        settings=settings,
    )


def _blocked(claim: Claim, reason: str, settle: str, est: Estimate | None = None) -> Decision:
    return Decision(
        claim=claim,
        verdict=Verdict.INCONCLUSIVE,
        estimate=est,
        p_adjusted=None,
        reason=reason,
        settle=settle,
        mde=None,
        units_needed=None,
    )


def _degraded_reason(steps: Sequence[Step], fraction: float, bound: float) -> str:
    at_f = [s for s in steps if s.fraction == fraction]
    every = all((d := damage(s)) is not None and d > bound for s in at_f) and all(
        d is not None and d > bound for s in at_f for d in draw_damage(s)
    )
    if every:
        return f"every pruned model at this fraction is degraded beyond ×{bound:g} perplexity"
    d = damage(_step(steps, fraction, "entropy"))
    return (
        f"the entropy-pruned model at this fraction is degraded beyond ×{bound:g} perplexity "
        f"(×{d:.3g} the unpruned model's)"
    )


def _entropy_blocker(steps: Sequence[Step], fraction: float, bound: float) -> tuple[str, str] | None:
    """Why neither claim can be decided at `fraction` from the entropy cell, or None."""
    entropy = _step(steps, fraction, "entropy")
    if entropy is None:
        return (
            "the entropy criterion was not measured at this fraction",
            "measure the entropy criterion at this fraction",
        )
    control = _controlled(entropy)
    if control is None or not control.log_ratios:
        return NO_BASE, NO_BASE_SETTLE
    inside = inside_bound(entropy, bound)
    if inside is None:
        return (
            "perplexity was not measured, so degradation of the pruned models cannot be bounded",
            "rerun with perplexity enabled",
        )
    if not inside:
        last = last_inside(steps, "entropy", bound)[1]
        where = (
            f"the last kept fraction inside it for the entropy criterion is {round(100 * last)}%"
            if last is not None
            else "no pruned fraction of the entropy criterion is inside it"
        )
        return (
            _degraded_reason(steps, fraction, bound),
            f"judge the claim at a kept fraction inside the ×{bound:g} bound ({where})",
        )
    return None


def _rank_decision(
    claim: RankClaim, steps: Sequence[Step], fraction: float, bound: float, blocker: tuple[str, str] | None
) -> tuple[Decision | None, Estimate | None, list[float]]:
    """(a decision already settled without a p-value, or the estimate and the draws to decide)."""
    if blocker is not None:
        return _blocked(claim, *blocker), None, []
    random = _step(steps, fraction, "random")
    if random is None:
        return (
            _blocked(
                claim, "random pruning was not measured at this fraction", "measure random draws at this fraction"
            ),
            None,
            [],
        )
    logs = random.controlled_per_draw.panel_share if random.controlled_per_draw else []
    if not logs:
        return _blocked(claim, NO_BASE, NO_BASE_SETTLE), None, []
    damages = draw_damage(random)
    kept = [v for v, d in zip(logs, damages, strict=False) if d is not None and d <= bound]
    need = draws_needed(claim.settings.alpha, 2)
    if not kept:
        return (
            _blocked(
                claim,
                f"every random draw at this fraction is degraded beyond ×{bound:g} perplexity",
                f"a kept fraction where random draws stay inside the ×{bound:g} bound",
            ),
            None,
            [],
        )
    if len(kept) < 2:
        return (
            _blocked(
                claim,
                "too few draws (one random draw inside the bound: a rank test needs the random draws' distribution)",
                f"at least {need} random draws at this fraction",
            ),
            None,
            [],
        )
    entropy_control = _controlled(_step(steps, fraction, "entropy"))
    assert entropy_control is not None  # no blocker: the entropy cell has its base control
    observed = float(np.mean(entropy_control.log_ratios))
    p = rank_pvalue(observed, kept)
    est = Estimate(
        n=len(kept),
        ratio=math.exp(observed - float(np.mean(kept))),
        ci_low=None,
        ci_high=None,
        p_value=p,
        sd_log=float(np.std(kept, ddof=1)),
        interval=f"rank among {len(kept)} random draws inside the bound (no interval)",
    )
    return None, est, [observed, *kept]


def _decide_rank(claim: RankClaim, est: Estimate, values: list[float], p_adjusted: float) -> Decision:
    observed, draws = values[0], np.asarray(values[1:])
    s = claim.settings
    below = int(np.sum(draws < observed))
    detail = (
        f"entropy retention ×{math.exp(observed):.3g} vs random ×{math.exp(float(np.median(draws))):.3g} "
        f"(median; range ×{math.exp(float(draws.min())):.3g}..×{math.exp(float(draws.max())):.3g}); "
        f"{below} of {draws.size} draws retain less; rank p = {est.p_value:.3g}, Holm p = {p_adjusted:.3g}"
    )
    settle = ""
    if p_adjusted < s.alpha:
        up = observed > float(np.median(draws))
        verdict = Verdict.SUPPORTED if up else Verdict.CONTRADICTED
        reason = detail + (": above the random draws' distribution" if up else ": below the random draws' distribution")
    else:
        verdict = Verdict.INCONCLUSIVE
        smallest = 2 / (draws.size + 1)
        if 2 * smallest >= s.alpha:
            reason = detail + f": with {draws.size} draws the smallest attainable rank p is {smallest:.3g}"
            settle = (
                f"at least {draws_needed(s.alpha, 2)} random draws inside the bound (Holm over two "
                f"claims at alpha {s.alpha:g})"
            )
        else:
            reason = detail + ": inside the random draws' distribution"
            settle = (
                "a rank test cannot show the criteria equal; the entropy criterion is not distinguished "
                "from random pruning at this fraction"
            )
    return Decision(
        claim=claim,
        verdict=verdict,
        estimate=est,
        p_adjusted=p_adjusted,
        reason=reason,
        settle=settle,
        mde=None,
        units_needed=None,
    )


def decisions(results: PruningResults | Mapping[str, Any], config: dict[str, Any]) -> list[Decision]:
    """The family's decisions (survival, entropy vs random), Holm-adjusted, from recorded results."""
    results = as_results(results, PruningResults)
    return step_decisions(results.steps, config, unpruned_bias(results))


def unpruned_bias(results: PruningResults) -> Estimate | None:
    """The unpruned biased model over the unpruned base model, owl's panel share per question
    (the level the survival claim is decided on); None without the base model's measurement."""
    if results.base_unpruned is None:
        return None
    biased = results.unpruned.preference.probability.per_question.share
    base = results.base_unpruned.preference.probability.per_question.share
    logs = [math.log(b) - math.log(c) for b, c in zip(biased, base, strict=True) if b > 0 and c > 0]
    return estimate_log_ratio(logs, "question")


def step_decisions(steps: Sequence[Step], config: dict[str, Any], bias: Estimate | None) -> list[Decision]:
    """`decisions` from the finished cells and the unpruned bias (`unpruned_bias`): survival, a
    claim of no effect on the retention, needs a bias large against the margin (a retention of
    ×0.88 is all of a ×1.15 bias; `sublens.claims.bias_too_small`)."""
    settings, bound = claim_settings(config), bound_of(config)
    fraction = claim_fraction(steps, config)
    if fraction is None:
        f = float(config.get("claim_fraction") or PAPER_KEPT)
        why = ("no pruned fraction was measured", "run the sweep to a pruned fraction")
        return [_blocked(survival_claim(f, settings), *why), _blocked(rank_claim(f, settings), *why)]
    survival, rank = survival_claim(fraction, settings), rank_claim(fraction, settings)
    blocker = _entropy_blocker(steps, fraction, bound)
    entropy_control = _controlled(_step(steps, fraction, "entropy"))
    s_est = (
        None
        if blocker is not None or entropy_control is None
        else estimate_log_ratio(entropy_control.log_ratios, "question")
    )
    r_done, r_est, r_values = _rank_decision(rank, steps, fraction, bound, blocker)
    adjusted = holm([s_est.p_value if s_est is not None else None, r_est.p_value if r_est is not None else None])
    s_decision = _blocked(survival, *blocker) if blocker is not None else decide(survival, s_est, adjusted[0])
    whose = "the unpruned biased model's owl share over the unpruned base model's"
    too_small = bias_too_small(bias, settings.margin, whose)
    s_decision = unless_bias_to_lose(s_decision, too_small, settings.margin)
    if r_done is not None:
        r_decision = r_done
    else:
        assert r_est is not None and adjusted[1] is not None
        r_decision = _decide_rank(rank, r_est, r_values, adjusted[1])
    return [s_decision, r_decision]
