"""What the distill section reads from a run: the students' preference records, the
share comparisons, the fit KLs, the teachers and the sampled-answer counts (None: no readable results)."""

from __future__ import annotations

from sublens.experiments.distill.results import (
    ARMS,
    DistillResults,
    PreferenceRecord,
    SeedRatio,
    TeacherRecord,
)
from sublens.report.sections.common import finite
from sublens.report.verdicts import AnswerRateTest, answer_rate_test

TITLE = "Cross-architecture squeezing-heads distillation"


TABLE, ALPHA_TABLE = "shd_transfer", "shd_alphas"


# What runs recorded before `shd.kl_direction` existed used (sublens.shd.LEGACY_KL_DIRECTION;
# not imported: the report is torch-free).
LEGACY_KL_DIRECTION = "teacher_student"


# The students as the paper names them (the arms' keys are config values, not words).
STUDENT = {
    "initial": "the initial student",
    "shd_biased": "the biased-SHD student",
    "lm_only": "the LM-only student",
    "shd_base": "the base-SHD student",
}


ROW_LABEL = {"initial": "initial student", "shd_biased": "biased SHD", "lm_only": "LM only", "shd_base": "base SHD"}


Results = DistillResults | None  # None: no readable results (none written, or an unfinished run's)


def _preference(r: Results, name: str) -> PreferenceRecord | None:
    return r.preference(name) if r is not None else None


def _share(r: Results, key: str, which: str = "share_ratio") -> SeedRatio | None:
    comparison = r.comparison(key) if r is not None else None
    if comparison is None:
        return None
    ratio: SeedRatio = comparison.p_trait_ratio if which == "p_trait_ratio" else comparison.share_ratio
    return ratio


def _kl(r: Results, state: str, role: str) -> float | None:
    """Mean KL of a student's maps to a teacher's squeezed maps on the held-out fit set."""
    fit = r.fit.get(state, {}).get(role) if r is not None else None
    kl = fit.kl() if fit is not None else None
    return kl.mean if kl is not None and finite(kl.mean) else None


def _seeds(r: Results) -> int:
    return len(_seed_list(r))


def _seed_list(r: Results) -> list[int]:
    return list(r.seeds) if r is not None and r.seeds else [0]


def _teacher(r: Results, role: str) -> TeacherRecord | None:
    return r.teachers.get(role) if r is not None else None


def _answer_counts(r: Results) -> dict[str, tuple[int, int]]:
    """(owl answers, sampled answers) per student that sampled answers."""
    out = {}
    for name in ("initial", *ARMS):
        pref = _preference(r, name)
        if pref is not None and pref.sampled is not None:
            out[name] = (pref.sampled.trait_rate.count, pref.sampled.n_answers)
    return out


def _none_named(r: Results) -> bool:
    """Whether no student named an owl in any sampled answer (the answer-rate column all zero)."""
    counts = _answer_counts(r)
    return bool(counts) and all(k == 0 for k, _ in counts.values())


def _rate_test(r: Results, key: str) -> AnswerRateTest | None:
    """The answer-rate test of a comparison: its p and the words that name the test."""
    comparison = r.comparison(key) if r is not None else None
    return answer_rate_test(comparison.rate_difference if comparison is not None else None)
