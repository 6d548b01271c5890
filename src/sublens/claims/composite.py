"""Composite claims: a claim that holds only when each of its legs (claims already decided)
holds (`all_legs`), and the "X blocks the transfer" form built on it (`blocks_transfer`,
`component_blocks_transfer`: transfer in the reference arm, the blocked arm equivalent to its
control, and a significant contrast between the arms)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sublens.claims.core import Claim, Decision, Verdict


def all_legs(
    claim: Claim, legs: Mapping[str, bool], parts: Sequence[Decision], main: Decision, against: str | None = None
) -> Decision:
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
    return Decision(
        claim=claim,
        verdict=verdict,
        estimate=main.estimate,
        p_adjusted=main.p_adjusted,
        reason=reason,
        settle=settle,
        mde=main.mde,
        units_needed=main.units_needed,
    )


def blocks_transfer(
    claim: Claim, reference: Decision, blocked: Decision, contrast: Decision, *, reference_leg: str, blocked_arm: str
) -> Decision:
    """ "X blocks the transfer" (docs/design.md, "Verdicts") needs all of (a) transfer in the
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
    against = (
        f"the {blocked_arm} transfers by itself ({blocked.reason})" if blocked.verdict is Verdict.SUPPORTED else None
    )
    return all_legs(claim, legs, (reference, blocked, contrast), contrast, against)


def component_blocks_transfer(component: str, unfrozen: Decision, frozen: Decision, contrast: Decision) -> Decision:
    """ "Freezing `component` blocks the transfer" (`blocks_transfer`): (a) transfer in the
    unfrozen arm, (b) the frozen arm equivalent to its matched control, (c) a significant
    contrast between the arms."""
    claim = Claim(
        name=f"localisation.freezing.{component}",
        statement=f"Freezing the {component} layers blocks the transfer",
        estimand=(
            f"(a) unfrozen-arm ratio, (b) {component}-frozen-arm ratio, each over its matched "
            f"control student, (c) their quotient, per seed"
        ),
        unit=contrast.claim.unit,
        prediction="increase",
        family=contrast.claim.family,
        settings=contrast.claim.settings,
    )
    return blocks_transfer(
        claim,
        unfrozen,
        frozen,
        contrast,
        reference_leg="transfer with the component trained",
        blocked_arm=f"{component}-frozen arm",
    )
