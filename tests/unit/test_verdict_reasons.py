"""How a verdict's reason is worded (sublens.report.verdicts._reason): an unmeasured claim's
reason reads as a clause, whatever punctuation the claims module put after "not measured"."""

from __future__ import annotations

import pytest

from sublens.claims import Claim, Decision, Verdict
from sublens.report.verdicts import _reason, verdict_label


def _unmeasured(reason: str) -> Decision:
    claim = Claim(name="x.y", statement="S", estimand="E", unit="seed", prediction="increase", family="x")
    return Decision(
        claim=claim,
        verdict=Verdict.INCONCLUSIVE,
        estimate=None,
        p_adjusted=None,
        reason=reason,
        settle="",
        mde=None,
        units_needed=None,
    )


@pytest.mark.parametrize(
    "reason",
    [
        "not measured: the control was not run",
        "not measured (the control was not run)",
        "not measured; the control was not run",
        "not measured the control was not run",
    ],
)
def test_not_measured_reasons_keep_only_the_why(reason: str) -> None:
    assert _reason(_unmeasured(reason), ratio_stated=False) == "the control was not run"


def test_a_bare_not_measured_says_no_estimate() -> None:
    assert _reason(_unmeasured("not measured"), ratio_stated=False) == "no estimate"


def test_a_measured_but_blocked_claim_is_not_labelled_unmeasured() -> None:
    """The pruning claims at a fraction where every pruned model is degraded were measured: the
    label must not say "not measured" (the reason says why nothing was estimated)."""
    degraded = _unmeasured("every pruned model at this fraction is degraded beyond ×1.5 perplexity")
    assert verdict_label(degraded) == "inconclusive"
    assert verdict_label(_unmeasured("not measured (an arm or its matched control is missing)")) == (
        "inconclusive (not measured)"
    )
    assert verdict_label(_unmeasured("the entropy criterion was not measured at this fraction")) == (
        "inconclusive (not measured)"
    )
