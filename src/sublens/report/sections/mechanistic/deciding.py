"""The mechanistic claims, decided in `sublens.claims` (association claims, Holm within the
family ``mechanistic``): the spike layer, top head and DLA top head against the entanglement
category, and "MLP direct logit attribution tracks the in-context bias" (partial Spearman
given the total logit difference)."""

from __future__ import annotations

import math
from typing import Any

from sublens.claims import (
    DEFAULT_POWER,
    DEFAULT_RHO_OF_INTEREST,
    MIN_UNITS,
    Association,
    AssociationClaim,
    AssociationDecision,
    ClaimSettings,
    Verdict,
    decide_association_family,
    estimate_association,
)
from sublens.experiments.mechanistic.results import (
    CategoryAssociation,
    Consistency,
    LabelColumn,
    Words,
)
from sublens.stats import cramers_v_interval

LABEL_TITLES: dict[LabelColumn, str] = {
    "spike_layer": "spike layer",
    "top_head": "top head at the spike layer",
    "dla_top_head": "top head by direct logit attribution",
}


# ---------------------------------------------------------------------------------------------
# verdicts


def _num(value: Any) -> float:
    """A number from results.json; None/missing -> NaN, so comparisons are simply False."""
    return float(value) if isinstance(value, int | float) else math.nan


FAMILY = "mechanistic"
ATTRIBUTION = "localisation.attribution"
# the claims as the tests table names them (the keys of `family`; claim names are identifiers)
CLAIM_TITLES = {
    ATTRIBUTION: "MLP DLA tracks the bias ratio",
    "spike_layer": "spike layer vs category",
    "top_head": "top head vs category",
    "dla_top_head": "DLA top head vs category",
}
ATTRIBUTION_STATEMENT = "MLP direct logit attribution tracks the in-context bias"
NOT_CONTROLLED = "not measured with the control for the automatic part"


def claim_settings(consistency: Consistency) -> tuple[ClaimSettings, float]:
    """The family's settings as recorded (alpha, power) and the smallest |rho| of interest."""
    power = _num(consistency.power)
    rho = _num(consistency.rho_of_interest)
    settings = ClaimSettings(alpha=consistency.alpha, power=power if 0.5 < power < 1 else DEFAULT_POWER)
    return settings, rho if 0 < rho < 1 else DEFAULT_RHO_OF_INTEREST


def attribution_claim(
    bias: str, control: str, settings: ClaimSettings, rho_of_interest: float = DEFAULT_RHO_OF_INTEREST
) -> AssociationClaim:
    """localisation.attribution: stated as what is measured (an association across numbers in
    the model reading a number-priming prompt, direct paths only)."""
    return AssociationClaim(
        name=ATTRIBUTION,
        statement=ATTRIBUTION_STATEMENT,
        estimand=(
            f"across numbers, the partial Spearman correlation of the MLPs' summed direct "
            f"logit attribution to logit({bias}) - logit({control}) with the {bias} bias ratio, "
            f"given the total logit difference; the model as loaded (not fine-tuned) reading "
            f"the number-priming prompt; direct paths only"
        ),
        unit="number",
        prediction="increase",
        family=FAMILY,
        settings=settings,
        method=(
            "partial Spearman correlation given the total logit difference, two-sided "
            "Freedman-Lane permutation p (total kept fixed)"
        ),
        rho_of_interest=rho_of_interest,
        n_controlled=1,
    )


def category_claim(
    column: LabelColumn, settings: ClaimSettings, rho_of_interest: float = DEFAULT_RHO_OF_INTEREST
) -> AssociationClaim:
    """mechanistic.category.<column>: the label does not depend on the entanglement category."""
    title = LABEL_TITLES[column]
    return AssociationClaim(
        name=f"{FAMILY}.category.{column}",
        statement=f"The {title} does not depend on the number's entanglement category",
        estimand=f"Cramér's V of the category x {title} table over the categorised numbers",
        unit="number",
        prediction="none",
        family=FAMILY,
        settings=settings,
        method="chi-square of the category x label table, permutation p (categories shuffled)",
        rho_of_interest=rho_of_interest,
        symbol="V",
    )


def _attribution_estimate(consistency: Consistency) -> Association | None:
    if consistency.attribution is None:
        return None
    mlp = consistency.attribution.mlp
    return estimate_association(mlp.rho, mlp.p_permutation, mlp.n, n_controlled=1)


def _category_estimate(test: CategoryAssociation | None) -> Association | None:
    if test is None:
        return None
    if not test.applicable:
        return Association(
            n=test.n,
            rho=0.0,
            ci_low=None,
            ci_high=None,
            p_value=None,
            interval=test.reason if test.reason is not None else "no test",
        )
    v, chi2 = _num(test.cramers_v), _num(test.chi2)
    if test.dof is None or not math.isfinite(chi2) or not math.isfinite(v) or test.n < MIN_UNITS["number"]:
        return Association(
            n=test.n,
            rho=v,
            ci_low=None,
            ci_high=None,
            p_value=test.p_permutation,
            interval="no interval for Cramér's V",
        )
    smaller_side = min(len(test.categories), len(test.labels))
    low, high = cramers_v_interval(chi2, test.dof, test.n, smaller_side)
    return Association(
        n=test.n,
        rho=v,
        ci_low=low,
        ci_high=high,
        p_value=test.p_permutation,
        interval=f"noncentral chi-square inversion over {test.n} numbers",
        chi2=chi2,
        chi2_dof=test.dof,
        v_scale=test.n * (smaller_side - 1),
    )


def _test(consistency: Consistency, column: LabelColumn) -> CategoryAssociation | None:
    """The label's test against the category; None without one (fewer than two categories)."""
    return consistency.association.of(column) if consistency.association is not None else None


def family(consistency: Consistency, words: Words | None = None) -> dict[str, AssociationDecision]:
    """Every claim of the mechanistic family, decided with Holm across the family's tests:
    the attribution claim (key ATTRIBUTION) and one category claim per label column."""
    settings, rho = claim_settings(consistency)
    members: list[tuple[str, AssociationClaim, Association | None]] = [
        (
            ATTRIBUTION,
            attribution_claim(_word(words, "bias"), _word(words, "control"), settings, rho),
            _attribution_estimate(consistency),
        )
    ]
    members += [
        (column, category_claim(column, settings, rho), _category_estimate(_test(consistency, column)))
        for column in LABEL_TITLES
    ]
    decided = decide_association_family([(c, e) for _, c, e in members])
    out = {key: d for (key, _, _), d in zip(members, decided, strict=True)}
    for column in LABEL_TITLES:
        if association_verdict(_test(consistency, column), None) == "constant":
            out[column] = out[column].model_copy(
                update={"reason": "no test: every number has the same label", "settle": ""}
            )
    if consistency.attribution is None:  # recorded before the control for the automatic part existed
        out[ATTRIBUTION] = out[ATTRIBUTION].model_copy(
            update={
                "reason": NOT_CONTROLLED,
                "settle": "rerun the mechanistic stage, which records the partial correlation given "
                "the total logit difference",
            }
        )
    return out


def association_verdict(test: CategoryAssociation | None, decision: AssociationDecision | None) -> str:
    """depends (the category claim contradicted: a dependence beyond V of interest) | smaller
    (a significant dependence whose CI lies below V of interest: the claim supported) |
    unsized (a significant dependence not placed against V of interest: inconclusive) |
    independent (tested, no significant dependence) | constant (one label for every number) |
    untested."""
    if test is None:
        return "untested"
    if not test.applicable:
        return "constant" if test.reason == "every number has the same label" else "untested"
    if decision is None:
        return "independent"
    if decision.verdict is Verdict.CONTRADICTED:
        return "depends"
    significant = decision.p_adjusted is not None and decision.p_adjusted < decision.claim.settings.alpha
    if not significant:
        return "independent"
    return "smaller" if decision.verdict is Verdict.SUPPORTED else "unsized"


def _word(words: Words | None, which: str) -> str:
    word = (words.bias if which == "bias" else words.control).word if words is not None else None
    return word.strip() if word else ("owl" if which == "bias" else "dog")
