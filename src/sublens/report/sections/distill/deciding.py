"""The distill family's two claims (transfer, specificity), decided with training seeds as the
unit by `sublens.claims`, and what the two decisions say together."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sublens.claims import (
    Claim,
    ClaimSettings,
    Decision,
    Verdict,
    decide_family,
    estimate_log_ratio,
    unless_learned,
)
from sublens.experiments.distill.results import SPECIFIC, TRANSFER, DistillResults
from sublens.learning import LearningCheck, learning_check
from sublens.report.sections.common import finite
from sublens.report.sections.distill.reading import Results, _share
from sublens.report.verdicts import verdict_label
from sublens.results import as_results

FAMILY = "distill"


def distill_claims(settings: ClaimSettings | None = None) -> list[tuple[str, Claim]]:
    """(comparison key, claim) of the distill family."""
    settings = settings or ClaimSettings()
    return [
        (
            TRANSFER,
            Claim(
                name="distill.transfer",
                statement="The owl bias crosses architectures through SHD",
                estimand=(
                    "owl's panel-share ratio of the student trained with LM loss + SHD from the biased "
                    "teacher over its matched control, the LM-loss-only student (same texts, same initial "
                    "weights, same training seed), geometric mean over questions per seed"
                ),
                unit="seed",
                prediction="increase",
                family=FAMILY,
                settings=settings,
            ),
        ),
        (
            SPECIFIC,
            Claim(
                name="distill.specific",
                statement="The rise is the teacher's bias, not attention distillation as such",
                estimand=(
                    "owl's panel-share ratio of the biased-SHD student over the student distilled from "
                    "the unbiased base model (same texts, same training seed), per seed"
                ),
                unit="seed",
                prediction="increase",
                family=FAMILY,
                settings=settings,
            ),
        ),
    ]


def per_seed_logs(r: Results, key: str) -> list[float]:
    """Per-seed log share ratios of one comparison (``per_seed_log``); a run recorded before
    they were stored has one seed, whose log ratio is the log of its (question-level) ratio."""
    entry = _share(r, key)
    if entry is None:
        return []
    if entry.per_seed_log is not None:
        return [float(v) for v in entry.per_seed_log if finite(v)]
    return [math.log(entry.ratio)] if finite(entry.ratio) and entry.ratio > 0 else []


# The arms whose SHD loss must fall for a claim's null to mean anything: SHD is the manipulation
# (the student's attention pulled towards the teacher's), so "no transfer through SHD" needs the
# SHD students to have taken up the teacher's attention; the LM loss of a pretrained student on
# generic text barely moves and would say nothing about that.
SHD_ARMS_BEHIND = {TRANSFER: ("shd_biased",), SPECIFIC: ("shd_biased", "shd_base")}


def decisions(r: DistillResults | Mapping[str, Any] | None, settings: ClaimSettings | None = None) -> list[Decision]:
    """The distill claims' decisions (transfer, specificity), Holm-adjusted within the family;
    `r`: the results, or a results.json mapping (validated: ResultsError), or None (no results).
    A null (equivalent) stands only where the SHD students behind it learned the SHD term
    (`shd_learning`, every seed pooled; sublens.claims.unless_learned)."""
    results = as_results(r, DistillResults) if r is not None else None
    keyed = distill_claims(settings)
    decided = decide_family([(claim, estimate_log_ratio(per_seed_logs(results, key), "seed")) for key, claim in keyed])
    return [
        unless_learned(d, shd_learning(results, SHD_ARMS_BEHIND[key])) if results is not None else d
        for (key, _), d in zip(keyed, decided, strict=True)
    ]


def shd_learning(results: DistillResults, arms: tuple[str, ...]) -> LearningCheck | None:
    """The learning check (`sublens.learning`) on the SHD loss curves of these arms' students,
    every training seed (older runs: the first seed's, in ``arms``)."""
    students = [seed[a].train for seed in results.per_seed.values() for a in arms if a in seed]
    if not students:
        students = [results.arms[a].train for a in arms if a in results.arms]
    curves = [[v for v in (t.extra_curves or {}).get("shd") or [] if v is not None] for t in students]
    return learning_check(curves)


def shd_verdict(r: DistillResults | Mapping[str, Any] | None, settings: ClaimSettings | None = None) -> str:
    """The transfer verdict word of the headline (a thin caller of `decisions`)."""
    return verdict_label(decisions(r, settings)[0])


def _conclusion(transfer: Decision, specific: Decision) -> str:
    """What the two decisions say together: transfer of the teacher's bias needs both."""
    if transfer.verdict is Verdict.SUPPORTED and specific.verdict is Verdict.SUPPORTED:
        return (
            "Both claims hold: the data support transfer of the teacher's bias through SHD from this teacher "
            "to this student of another architecture (one model pair)."
        )
    if transfer.verdict is Verdict.SUPPORTED:
        return (
            "The rise over the LM-only student is not shown to come from the teacher's bias (the "
            "specificity claim is " + verdict_label(specific) + "), so transfer of the bias through "
            "SHD is not established."
        )
    if transfer.verdict is Verdict.CONTRADICTED:
        return "SHD from the biased teacher lowered owl's share against the LM-only student: no transfer."
    if transfer.verdict is Verdict.EQUIVALENT:
        return (
            "No rise as large as the margin over the LM-only student: the data indicate no transfer "
            "of the bias through SHD at this scale."
        )
    return "Transfer of the bias through SHD is neither shown nor excluded by these data."
