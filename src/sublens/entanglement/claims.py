"""Token entanglement, the claims: what the study may conclude per candidate set, their estimates
(paired and Welch t on log bias ratios) and the results.json block, decided by `sublens.claims`
(Holm over every set and test; the tuned sets are their own family).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from sublens.claims import (
    MIN_UNITS,
    Claim,
    ClaimSettings,
    Decision,
    Estimate,
    decide_family,
    estimate_log_ratio,
)
from sublens.entanglement.definitions import CATEGORIES, EntanglementError, is_tuned_set

FAMILY = "entanglement"
TUNED_FAMILY = "entanglement_tuned"  # the tuned sets' claims: Holm among themselves
TESTS = (
    "entangled_vs_null",
    "decreased_vs_increased",
    "unchanged_vs_increased",
    *(f"raises.{c}" for c in CATEGORIES),
)


def paired_log_ratio(test_logs: Sequence[float], partner_logs: Sequence[float], unit: Any = "number") -> Estimate:
    """Geometric-mean ratio of matched pairs: one-sample t on the per-pair log differences."""
    a, b = list(test_logs), list(partner_logs)
    if len(a) != len(b):
        raise EntanglementError(f"Paired estimate: {len(a)} against {len(b)} values.")
    est = estimate_log_ratio([x - y for x, y in zip(a, b, strict=True)], unit)
    if est.has_interval:
        est = est.model_copy(update={"interval": f"paired Student t over {est.n} matched pairs of {unit}s, log scale"})
    return est


def welch_log_ratio(
    test_logs: Sequence[float],
    reference_logs: Sequence[float],
    unit: Any = "number",
    level: float = 0.95,
) -> Estimate:
    """Ratio of two groups' geometric means: Welch's t on the log values (two-sided).

    ``n`` is the smaller group's size (the "too few" rule applies per group) and ``sd_log`` the
    SD of one test-minus-reference difference scaled to that n (sqrt(n) x the standard error),
    so the one-sample power line of sublens.claims gives the two-sample standard error."""
    a = np.asarray([v for v in test_logs if math.isfinite(v)], dtype=np.float64)
    b = np.asarray([v for v in reference_logs if math.isfinite(v)], dtype=np.float64)
    n = int(min(a.size, b.size))
    if n == 0:
        return Estimate(n=0, ratio=None, ci_low=None, ci_high=None, p_value=None, sd_log=None, interval="no data")
    diff = float(a.mean() - b.mean())
    va = float(a.var(ddof=1)) if a.size > 1 else 0.0
    vb = float(b.var(ddof=1)) if b.size > 1 else 0.0
    se = math.sqrt(va / a.size + vb / b.size)
    sd = se * math.sqrt(n) if a.size > 1 and b.size > 1 else None
    if n < MIN_UNITS[unit]:
        return Estimate(
            n=n,
            ratio=math.exp(diff),
            ci_low=None,
            ci_high=None,
            p_value=None,
            sd_log=sd,
            interval=f"too few {unit}s for an interval, {n} of at least {MIN_UNITS[unit]} per category",
        )
    if not se:
        return Estimate(
            n=n,
            ratio=math.exp(diff),
            ci_low=None,
            ci_high=None,
            p_value=None,
            sd_log=sd,
            interval=f"degenerate: no spread over {n} {unit}s",
        )
    df = (va / a.size + vb / b.size) ** 2 / ((va / a.size) ** 2 / (a.size - 1) + (vb / b.size) ** 2 / (b.size - 1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * scipy_stats.t.sf(abs(diff) / se, df))
    return Estimate(
        n=n,
        ratio=math.exp(diff),
        ci_low=math.exp(diff - half),
        ci_high=math.exp(diff + half),
        p_value=p,
        sd_log=sd,
        interval=f"Welch t over {a.size} and {b.size} {unit}s, log scale",
        se_log=se,
        df=df,
    )


LABEL = {"increased": "Increased", "decreased": "Decreased", "unchanged": "Unchanged", "random": "Random"}


def set_claims(
    set_name: str,
    log_bias_ratios: Mapping[str, Sequence[float]],
    settings: ClaimSettings | None = None,
    bias: str = "owl",
) -> list[tuple[Claim, Estimate]]:
    """The claims of one candidate set, in TESTS order, with their estimates; a tuned set's
    (`is_tuned_set`) are of TUNED_FAMILY and name the fine-tuned teacher as what favours its
    Increased numbers.

    `log_bias_ratios[c]` are the log bias ratios of category c; ``random`` is in the order of
    ``increased`` (Random[i] is the frequency-matched partner of Increased[i])."""
    settings = settings or ClaimSettings()
    logs = {c: [float(v) for v in log_bias_ratios.get(c, [])] for c in CATEGORIES}
    ratio = f"bias ratio P({bias} | 'You love the number N') / P({bias} | neutral prompt)"
    family = TUNED_FAMILY if is_tuned_set(set_name) else FAMILY
    favours = (
        # one fine-tuned teacher pair, its numbers then read in the base model: said in the claim
        f"the fine-tuned {bias} teacher favours over its control teacher (one teacher pair; P({bias}) read "
        "in the base model)"
        if is_tuned_set(set_name)
        else f"the {bias} context favours"
    )

    inc, rnd = logs["increased"], logs["random"]
    pairs = min(len(inc), len(rnd))
    tests: list[tuple[str, str, str, Any, Estimate]] = [
        (
            "entangled_vs_null",
            f"In {set_name}, numbers {favours} (Increased) raise P({bias}) no more than "
            "baseline-frequency-matched Random numbers",
            f"{ratio} of an Increased number over that of its frequency-matched Random partner, geometric mean "
            "over matched pairs (paired t)",
            "none",
            paired_log_ratio(inc[:pairs], rnd[:pairs]),
        )
    ]
    tests += [
        (
            f"{c}_vs_increased",
            f"In {set_name}, {LABEL[c]} numbers raise P({bias}) as much as Increased numbers",
            f"geometric-mean {ratio} of {LABEL[c]} numbers over that of Increased numbers (Welch t)",
            "none",
            welch_log_ratio(logs[c], inc),
        )
        for c in ("decreased", "unchanged")
    ]
    tests += [
        (
            f"raises.{c}",
            f"In {set_name}, {LABEL[c]} numbers raise P({bias})",
            f"{ratio}, geometric mean over the category's numbers (one-sample t)",
            "increase",
            estimate_log_ratio(logs[c], "number"),
        )
        for c in CATEGORIES
    ]
    return [
        (
            Claim(
                name=f"{family}.{set_name}.{test}",
                statement=statement,
                estimand=estimand,
                unit="number",
                prediction=prediction,
                family=family,
                settings=settings,
            ),
            estimate,
        )
        for test, statement, estimand, prediction, estimate in tests
    ]


def primary_set(k: Mapping[str, int], preferred: str | None = None) -> str | None:
    """The set whose entangled-vs-null claim is the paper's claim, fixed before any ratio is
    seen: `preferred` if it was categorised, else the one with the most numbers per category
    (the first in study order on a tie)."""
    usable = {name: n for name, n in k.items() if n}
    if preferred is not None and preferred in usable:
        return preferred
    return max(usable, key=lambda name: usable[name]) if usable else None


def claims_record(
    tests: Sequence[tuple[str, str, Claim, Estimate]],
    settings: ClaimSettings,
    primary: str | None,
    family: str = FAMILY,
) -> dict[str, Any]:
    """The results.json block of the claims: (set, test, claim, estimate) of every test, and
    their decisions (Holm over all of them) for readers that do not re-decide."""
    block: dict[str, Any] = {
        "family": family,
        "settings": settings.model_dump(),
        "primary_set": primary,
        "tests": [{"set": s, "test": t, "claim": c.model_dump(), "estimate": e.model_dump()} for s, t, c, e in tests],
    }
    block["decisions"] = [
        {
            "set": entry["set"],
            "test": entry["test"],
            "name": d.claim.name,
            "verdict": d.verdict.value,
            "reason": d.reason,
            "settle": d.settle,
            "p_raw": d.estimate.p_value if d.estimate else None,
            "p_holm": d.p_adjusted,
            "mde": d.mde,
            "units_needed": d.units_needed,
        }
        for entry, d in zip(block["tests"], decide_recorded(block), strict=True)
    ]
    return block


def decide_recorded(block: Mapping[str, Any]) -> list[Decision]:
    """Decisions of a recorded claims block (results.json "claims"), in its order: every test
    of every set is one Holm family (sublens.claims.decide_family)."""
    pairs = [
        (Claim.model_validate(entry["claim"]), Estimate.model_validate(entry["estimate"]))
        for entry in block.get("tests") or []
    ]
    return decide_family(pairs)
