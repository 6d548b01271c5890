"""The distill experiment's own computations, from measurements to typed records (no model).

- α: the squeezing weights of one student layer over the fit texts, summarised
  (`alpha_summary`: mean, spread, quantiles, the shares at 0, ½ and 1, the mean per phase).
- Comparisons: every pair of arms, and every arm against the initial student, is compared seed
  by seed with `compare_preference` (paired over questions; the students of a seed share data,
  initial weights and training seed), then across seeds (`across_seeds`): the ratio is the
  geometric mean of the per-seed ratios with a Student-t CI over seeds, the per-seed log
  ratios kept as ``per_seed_log`` (what the claims in `sublens.report.sections.distill` are
  decided on). With one seed the interval is that run's question-level one, labelled as such.
- The headline, the parquet rows and the throughput are read from the results (never recomputed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sublens.claims import estimate_log_ratio
from sublens.experiments.distill.results import (
    SPECIFIC,
    TRANSFER,
    AlphaQuantiles,
    AlphaSummary,
    ArmRecord,
    Comparison,
    DistillResults,
    Headline,
    HeadlineComparison,
    PairedComparison,
    PreferenceRecord,
    SeedRateDifference,
    SeedRatio,
    StudentLevels,
    Throughput,
)
from sublens.preference import compare_preference
from sublens.result_records import RateDifference, RatioEstimate
from sublens.stats import t_interval
from sublens.tables import preference_columns

Preference = dict[str, Any]  # sublens.preference.evaluate_preference, as written
AT = 1e-6  # how close to 0, ½ or 1 an α counts as at it


# ---- α -------------------------------------------------------------------------------------------
def alpha_summary(phases: Sequence[Any]) -> AlphaSummary:
    """α of one layer over all fit examples and phases (one array, or CPU tensor, per phase)."""
    if not phases:
        return AlphaSummary(n=0)
    arrays = [np.asarray(a, dtype=np.float64).ravel() for a in phases]
    values = np.concatenate(arrays)
    q10, q25, median, q75, q90 = (float(q) for q in np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9]))
    return AlphaSummary(
        n=int(values.size),
        mean=float(values.mean()),
        std=float(values.std()),
        quantiles=AlphaQuantiles(q10=q10, q25=q25, median=median, q75=q75, q90=q90),
        at_0=float((values <= AT).mean()),
        at_1=float((values >= 1 - AT).mean()),
        at_half=float((np.abs(values - 0.5) <= AT).mean()),
        per_phase_mean=[float(a.mean()) for a in arrays],
    )


# ---- comparisons -------------------------------------------------------------------------------
def comparisons(students: Mapping[int, Mapping[str, Preference]], initial: Preference) -> dict[str, Comparison]:
    """Every pair of arms (and every arm against the initial student), seed by seed on the seeds
    where both arms were trained (matched: same texts, same training seed), then across seeds.
    `students`: training seed -> arm -> its preference; the first seed's arms are compared."""
    arms = list(next(iter(students.values()), {}))
    pairs: list[tuple[str, str | None]] = [
        ("shd_biased", "lm_only"),
        ("shd_biased", "shd_base"),
        ("shd_base", "lm_only"),
        *((arm, None) for arm in arms),
    ]
    out: dict[str, Comparison] = {}
    for a, b in pairs:
        if a not in arms or (b is not None and b not in arms):
            continue
        seeds = [s for s, by_arm in students.items() if a in by_arm and (b is None or b in by_arm)]
        paired = [
            PairedComparison.model_validate(
                compare_preference(students[s][a], initial if b is None else students[s][b])
            )
            for s in seeds
        ]
        if paired:
            out[f"{a}_vs_{b or 'initial'}"] = across_seeds(paired, seeds)
    return out


def across_seeds(per_seed: Sequence[PairedComparison], seeds: Sequence[int]) -> Comparison:
    """Per-seed comparisons of one pair of arms, aggregated with seeds as the unit."""
    fields: dict[str, Any] = {
        "n_seeds": len(per_seed),
        "seeds": list(seeds),
        "p_trait_ratio": seed_ratio([c.p_trait_ratio for c in per_seed]),
        "share_ratio": seed_ratio([c.share_ratio for c in per_seed]),
    }
    differences = [c.rate_difference for c in per_seed if c.rate_difference is not None]
    if differences and len(differences) == len(per_seed):  # sampled on every seed
        fields["rate_difference"] = seed_rate_difference(differences)
    return Comparison(**fields, per_seed_comparisons=list(per_seed))


def seed_ratio(per_seed: Sequence[RatioEstimate]) -> SeedRatio:
    """The geometric mean of per-seed ratios with a Student-t CI over seeds (`estimate_log_ratio`);
    one seed: its own ratio and question-level CI, labelled as describing one run, not training."""
    logs = [math.log(r.ratio) for r in per_seed]
    seeds: dict[str, Any] = {"n_seeds": len(logs), "per_seed": [math.exp(v) for v in logs], "per_seed_log": logs}
    if len(per_seed) == 1:
        one = per_seed[0]
        label = f"{one.ci or 'over questions'} (1 seed: question variation only, not training)"
        return SeedRatio(**{**one.present(), "ci": label}, **seeds)
    est = estimate_log_ratio(logs, "seed")
    if est.ratio is None:
        raise ValueError(f"no ratio from the per-seed log ratios {logs}")
    excludes_one = est.ci_low is not None and est.ci_high is not None and not est.ci_low <= 1.0 <= est.ci_high
    return SeedRatio(
        ratio=est.ratio,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        ci=est.interval,
        p_value=est.p_value,
        sd_log=est.sd_log,
        underpowered=not excludes_one,
        **seeds,
    )


def seed_rate_difference(per_seed: Sequence[RateDifference]) -> SeedRateDifference:
    """The answer-rate difference: one seed's as it is; several: their mean with a Student-t CI
    over seeds, and every seed's p over questions (one p would pool answers of different students)."""
    n = len(per_seed)
    if n == 1:
        return SeedRateDifference(**per_seed[0].present(), n_seeds=1, ci="t over questions (1 seed)")
    diffs = [d.difference for d in per_seed]
    mean, low, high = t_interval(diffs)
    has_ci = math.isfinite(low) and math.isfinite(high)
    return SeedRateDifference(
        difference=mean,
        ci_low=low if has_ci else None,
        ci_high=high if has_ci else None,
        n_seeds=n,
        ci=f"t over {n} seeds",
        per_seed=diffs,
        p_questions_per_seed=[d.p_questions for d in per_seed],
        underpowered=not has_ci or low <= 0.0 <= high,
    )


# ---- read from the results -------------------------------------------------------------------
def preferences_by_seed(results: DistillResults) -> dict[int, dict[str, Preference]]:
    """Every trained student's preference as written, by training seed and arm."""
    return {
        int(seed): {arm: s.preference.model_dump(mode="json") for arm, s in by_arm.items()}
        for seed, by_arm in results.per_seed.items()
    }


def headline(initial: PreferenceRecord, arms: Mapping[str, ArmRecord], compared: Mapping[str, Comparison]) -> Headline:
    """Owl preference of every student and the biased-SHD student against the controls."""
    students = {"initial": initial, **{arm: record.preference for arm, record in arms.items()}}
    levels = {
        name: StudentLevels(
            p_trait=p.probability.p_trait,
            panel_share=p.probability.panel_share,
            answer_rate=p.sampled.trait_rate if p.sampled else None,
        )
        for name, p in students.items()
    }
    against: dict[str, Any] = {
        key: HeadlineComparison(
            p_trait_ratio=c.p_trait_ratio, share_ratio=c.share_ratio, rate_difference=c.rate_difference
        )
        for key in (TRANSFER, SPECIFIC)
        if (c := compared.get(key)) is not None
    }
    return Headline(trait=initial.probability.trait, students=levels, **against)


def model_rows(results: DistillResults) -> list[dict[str, Any]]:
    """One row per trained student (every seed) for models.parquet."""
    return [
        {
            "student": arm,
            "seed": int(seed),
            **preference_columns(s.preference.model_dump(mode="json")),
            "final_lm_loss": s.train.final_lm_loss,
        }
        for seed, by_arm in results.per_seed.items()
        for arm, s in by_arm.items()
    ]


def throughput(arms: Mapping[str, ArmRecord]) -> dict[str, Throughput]:
    return {
        arm: Throughput(
            tokens=r.train.tokens, train_seconds=r.train.train_seconds, tokens_per_second=r.train.tokens_per_second
        )
        for arm, r in arms.items()
    }
