"""Retention statistics of a pruning sweep: from measurements of masked models to one `Step`
per (fraction, criterion) cell. No model is loaded here (numpy only).

Retention, paired on the same questions:
- the biased model's own (pruned / unpruned) and the base model's own, as `compare_preference`;
- base-controlled: per question, log(v_biased_pruned / v_base_pruned) -
  log(v_biased_unpruned / v_base_unpruned) for v = P(owl) and owl's panel share, so pruning
  damage common to both models cancels; geometric mean over questions, Student-t CI on the log
  scale (`sublens.claims.estimate_log_ratio`, unit: question). With several random draws the
  per-question value is averaged over draws first; each draw's own mean is kept
  (`controlled_per_draw`) for the rank test against the entropy criterion.
- Answer rate: pooled rate of the pruned model(s) / rate of the unpruned model, per model, and
  base-controlled (the ratio of the two), CI by resampling questions (none below 5 questions).
- Perplexity: the mean over draws, per-draw ratios to the unpruned perplexity, for both models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from sublens.claims import estimate_log_ratio
from sublens.experiments.pruning.config import PruningConfig
from sublens.experiments.pruning.results import (
    ArmRates,
    BaseArm,
    Controlled,
    ControlledRateRetention,
    ControlledRetention,
    Criterion,
    Measurement,
    PerDraw,
    PerplexityChange,
    PreferenceRecord,
    PruningResults,
    RateDifference,
    RateRetention,
    RatioEstimate,
    Retention,
    SampledRecord,
    Step,
    Summary,
)
from sublens.preference import compare_preference, question_rates
from sublens.pruning import keep_count
from sublens.stats import MIN_INTERVAL_N, summarize, wilson_ci

Level = Literal["p_trait", "panel_share"]


def _sampled(preferences: Sequence[PreferenceRecord]) -> list[SampledRecord] | None:
    """The sampled answers of every preference, or None when one was not sampled."""
    sampled = [p.sampled for p in preferences]
    return [s for s in sampled if s is not None] if all(s is not None for s in sampled) else None


def pooled_preference(preferences: Sequence[PreferenceRecord]) -> dict[str, Any]:
    """Several draws as one (the form `compare_preference` reads): per-question geometric means
    of P(animal) and share, answers pooled."""
    p_word = np.exp(np.mean([np.log(p.probability.per_question.p_word) for p in preferences], axis=0))
    share = np.exp(np.mean([np.log(p.probability.per_question.share) for p in preferences], axis=0))
    pooled: dict[str, Any] = {"probability": {"per_question": {"p_word": p_word.tolist(), "share": share.tolist()}}}
    sampled = _sampled(preferences)
    if sampled is not None:
        count = sum(s.trait_rate.count for s in sampled)
        n = sum(s.n_answers for s in sampled)
        low, high = wilson_ci(count, n)
        n_questions = sampled[0].n_questions
        pooled["probability"]["trait"] = preferences[0].probability.trait
        pooled["sampled"] = {
            "n_answers": n,
            "trait_rate": {"count": count, "rate": count / n, "ci_low": low, "ci_high": high},
            # every draw's answers to a question together: the question stays the unit
            "n_questions": n_questions,
            "samples_per_question": sum(s.samples_per_question for s in sampled),
            "answers": [a for q in range(n_questions) for s in sampled for a in _question_answers(s, q)],
        }
    return pooled


def _question_answers(sampled: SampledRecord, question: int) -> list[str]:
    per_question = sampled.samples_per_question
    return sampled.answers[question * per_question : (question + 1) * per_question]


def question_hits(sampled: SampledRecord, trait: str) -> np.ndarray:
    """Trait mentions per question [question]."""
    per_question = sampled.samples_per_question
    ordered = {"answers": sampled.answers, "n_questions": sampled.n_questions, "samples_per_question": per_question}
    return question_rates(ordered, trait) * per_question


def _percentile_bounds(ratios: np.ndarray) -> tuple[float | None, float | None]:
    """The 95% percentile interval of bootstrap ratios; an infinite bound is None (unbounded)."""
    bounds = [float(v) for v in np.percentile(ratios, [2.5, 97.5], method="inverted_cdf")]
    low, high = (v if math.isfinite(v) else None for v in bounds)
    return low, high


def _interval_text(n_q: int) -> str:
    return (
        f"percentile bootstrap over {n_q} questions"
        if n_q >= MIN_INTERVAL_N
        else f"too few questions for an interval, {n_q} of at least {MIN_INTERVAL_N}"
    )


def rate_retention(
    tests: Sequence[PreferenceRecord],
    reference: PreferenceRecord,
    trait: str,
    resamples: int = 5000,
    seed: int = 0,
) -> RateRetention | None:
    """Pooled answer rate of `tests` / answer rate of `reference`, CI by resampling questions."""
    tested = _sampled(tests)
    if reference.sampled is None or tested is None:
        return None
    ref = question_hits(reference.sampled, trait)  # [q]
    test = np.sum([question_hits(t, trait) for t in tested], axis=0)  # [q], over draws
    per_ref = reference.sampled.samples_per_question
    per_test = sum(t.samples_per_question for t in tested)
    rate = float(test.sum() / (per_test * test.size))
    reference_rate = float(ref.sum() / (per_ref * ref.size))
    if ref.sum() == 0:
        return RateRetention(
            rate=rate,
            reference_rate=reference_rate,
            n_questions=int(ref.size),
            n_draws=len(tests),
            ratio=None,
            ci_low=None,
            ci_high=None,
            underpowered=True,
            note="the unpruned model never named the trait: the ratio is undefined",
        )
    low: float | None = None
    high: float | None = None
    if ref.size >= MIN_INTERVAL_N:  # fewer questions: no question-level CI ("too few")
        index = np.random.default_rng(seed).integers(0, ref.size, (resamples, ref.size))  # [B, q]
        num, den = test[index].sum(axis=1) / per_test, ref[index].sum(axis=1) / per_ref
        ratios = np.full(resamples, np.inf)  # a resample where the reference never names the trait
        np.divide(num, den, out=ratios, where=den > 0)
        low, high = _percentile_bounds(ratios)  # None above: unbounded
    underpowered = low is None or high is None or low <= 1.0 <= high
    return RateRetention(
        rate=rate,
        reference_rate=reference_rate,
        n_questions=int(ref.size),
        n_draws=len(tests),
        ratio=rate / reference_rate,
        ci_low=low,
        ci_high=high,
        ci=_interval_text(int(ref.size)),
        underpowered=underpowered,
    )


def level_values(preference: PreferenceRecord, level: Level) -> np.ndarray:
    """Per-question P(trait) (level p_trait) or the trait's panel share (level panel_share)."""
    per_question = preference.probability.per_question
    if level == "p_trait":
        return np.asarray(per_question.p_word, dtype=float)[:, 0]
    return np.asarray(per_question.share, dtype=float)


def controlled_log_ratios(
    biased: PreferenceRecord,
    base: PreferenceRecord,
    biased_unpruned: PreferenceRecord,
    base_unpruned: PreferenceRecord,
    level: Level,
) -> np.ndarray:
    """Per question: log(v_biased / v_base) pruned minus the same unpruned."""
    pruned = np.log(level_values(biased, level)) - np.log(level_values(base, level))
    unpruned = np.log(level_values(biased_unpruned, level)) - np.log(level_values(base_unpruned, level))
    return pruned - unpruned


def controlled_retention(log_ratios: np.ndarray) -> ControlledRetention:
    """A base-controlled retention: geometric mean over questions with its Student-t interval."""
    values = [float(v) for v in log_ratios]
    est = estimate_log_ratio(values, "question")
    return ControlledRetention(
        ratio=est.ratio,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        p_value=est.p_value,
        n_questions=est.n,
        sd_log=est.sd_log,
        ci=est.interval,
        log_ratios=values,
    )


def controlled_rate_retention(
    biased: Sequence[PreferenceRecord],
    biased_reference: PreferenceRecord,
    base: Sequence[PreferenceRecord],
    base_reference: PreferenceRecord,
    trait: str,
    resamples: int = 5000,
    seed: int = 0,
) -> ControlledRateRetention | None:
    """(biased pruned rate / unpruned rate) / (base pruned rate / unpruned rate), answers pooled
    over draws; CI by resampling questions (all four arms together), none below 5 questions."""
    arms = [_sampled(arm) for arm in (biased, [biased_reference], base, [base_reference])]
    if any(arm is None for arm in arms):
        return None
    sampled_arms = [arm for arm in arms if arm is not None]
    hits = [np.sum([question_hits(m, trait) for m in arm], axis=0) for arm in sampled_arms]  # [q] each
    per = [sum(m.samples_per_question for m in arm) for arm in sampled_arms]
    n_q = int(hits[0].size)
    rates = [float(h.sum() / (p * n_q)) for h, p in zip(hits, per, strict=True)]
    arm_rates = ArmRates(biased=rates[0], biased_unpruned=rates[1], base=rates[2], base_unpruned=rates[3])
    if min(rates[1], rates[2], rates[3]) == 0:
        return ControlledRateRetention(
            rates=arm_rates,
            n_questions=n_q,
            ratio=None,
            ci_low=None,
            ci_high=None,
            note="a reference rate is 0 (the unpruned models or the pruned base never named the trait): "
            "the ratio is undefined",
        )
    ratio = (rates[0] / rates[1]) / (rates[2] / rates[3])
    low: float | None = None
    high: float | None = None
    if n_q >= MIN_INTERVAL_N:
        index = np.random.default_rng(seed).integers(0, n_q, (resamples, n_q))  # [B, q]
        sums = [h[index].sum(axis=1) for h in hits]  # sample sizes cancel within each ratio pair
        num, den = sums[0] * sums[3] * per[1] * per[2], sums[1] * sums[2] * per[0] * per[3]
        ratios = np.full(resamples, np.inf)
        np.divide(num, den, out=ratios, where=den > 0)
        low, high = _percentile_bounds(ratios)
        if low is not None and high is not None and not low < high:
            low = high = None  # a zero-width interval is never a result
    return ControlledRateRetention(
        rates=arm_rates, n_questions=n_q, ratio=ratio, ci_low=low, ci_high=high, ci=_interval_text(n_q)
    )


def perplexity_change(measurements: Sequence[Measurement], unpruned: Measurement) -> PerplexityChange | None:
    """Mean perplexity over draws and each draw's over the unpruned model's; None if not measured."""
    ppl = [m.perplexity.perplexity for m in measurements if m.perplexity]
    if not ppl or not unpruned.perplexity:
        return None
    reference = unpruned.perplexity.perplexity
    return PerplexityChange(
        mean=float(np.mean(ppl)),
        per_draw=ppl,
        ratio=float(np.mean(ppl)) / reference,
        per_draw_ratio=[p / reference for p in ppl],
    )


def as_dict(preference: PreferenceRecord) -> dict[str, Any]:
    """A preference record as `sublens.preference` reads it: no "sampled" key when not sampled."""
    return preference.model_dump(exclude_none=True)


def _ratio(entry: dict[str, Any]) -> RatioEstimate:
    return RatioEstimate.model_validate(entry)


def own_retention(
    preferences: Sequence[PreferenceRecord],
    reference: PreferenceRecord,
    trait: str,
    resamples: int,
    seed: int,
) -> tuple[Retention, dict[str, Any]]:
    """A model's own retention (pruned draws pooled / unpruned), and `compare_preference`'s
    full comparison (it also holds the answer-rate difference)."""
    comparison = compare_preference(pooled_preference(preferences), as_dict(reference))
    retention = Retention(
        p_trait=_ratio(comparison["p_trait_ratio"]),
        panel_share=_ratio(comparison["share_ratio"]),
        answer_rate=rate_retention(preferences, reference, trait, resamples, seed),
    )
    return retention, comparison


def summarize_step(
    fraction: float,
    criterion: Criterion,
    measurements: Sequence[Measurement],
    unpruned: Measurement,
    n_total: int,
    config: PruningConfig,
    base_measurements: Sequence[Measurement] | None = None,
    base_unpruned: Measurement | None = None,
) -> Step:
    """One (fraction, criterion) cell: levels, retention with CIs, perplexity; with the base
    model's measurements of the same masks, its own retention and the base-controlled one."""
    trait, resamples, seed = config.preference.trait, config.bootstrap_resamples, config.seed
    prefs = [m.preference for m in measurements]
    reference = unpruned.preference
    retention, comparison = own_retention(prefs, reference, trait, resamples, seed)
    per_draw = [compare_preference(as_dict(p), as_dict(reference)) for p in prefs]
    pooled = pooled_preference(prefs)
    n_keep = keep_count(fraction, n_total)
    step = Step(
        fraction=fraction,
        criterion=criterion,
        n_kept=n_keep,
        n_pruned=n_total - n_keep,
        n_draws=len(measurements),
        p_trait=_summary(np.mean([level_values(p, "p_trait") for p in prefs], axis=0)),
        panel_share=_summary(np.mean([p.probability.per_question.share for p in prefs], axis=0)),
        answer_rate=pooled.get("sampled", {}).get("trait_rate"),
        retention=retention,
        retention_per_draw=PerDraw(
            p_trait=[c["p_trait_ratio"]["ratio"] for c in per_draw],
            panel_share=[c["share_ratio"]["ratio"] for c in per_draw],
        ),
        answer_rate_difference=(
            RateDifference.model_validate(comparison["rate_difference"]) if "rate_difference" in comparison else None
        ),
        perplexity=perplexity_change(measurements, unpruned),
    )
    if base_measurements is None or base_unpruned is None:
        return step
    if len(base_measurements) != len(measurements):
        raise ValueError("the base model needs one measurement per draw of the biased model")
    base_fields = _base_arm_fields(prefs, reference, base_measurements, base_unpruned, config)
    return step.model_copy(update=base_fields)


def _base_arm_fields(
    prefs: Sequence[PreferenceRecord],
    reference: PreferenceRecord,
    base_measurements: Sequence[Measurement],
    base_unpruned: Measurement,
    config: PruningConfig,
) -> dict[str, Any]:
    """The `Step` fields that need the base model's measurements of the same masks (one per
    draw, in the biased model's draw order): its own arm, the base-controlled retention and
    each draw's controlled log retention."""
    trait, resamples, seed = config.preference.trait, config.bootstrap_resamples, config.seed
    base_prefs = [m.preference for m in base_measurements]
    base_reference = base_unpruned.preference
    base = BaseArm(
        p_trait=_summary(np.mean([level_values(p, "p_trait") for p in base_prefs], axis=0)),
        panel_share=_summary(np.mean([level_values(p, "panel_share") for p in base_prefs], axis=0)),
        retention=own_retention(base_prefs, base_reference, trait, resamples, seed)[0],
        perplexity=perplexity_change(base_measurements, base_unpruned),
    )
    logs = {
        level: np.array(
            [
                controlled_log_ratios(b, c, reference, base_reference, level)
                for b, c in zip(prefs, base_prefs, strict=True)
            ]
        )  # [draw, question]
        for level in ("p_trait", "panel_share")
    }
    controlled = Controlled(
        p_trait=controlled_retention(logs["p_trait"].mean(axis=0)),
        panel_share=controlled_retention(logs["panel_share"].mean(axis=0)),
        answer_rate=controlled_rate_retention(prefs, reference, base_prefs, base_reference, trait, resamples, seed),
    )
    per_draw_controlled = PerDraw(  # each draw's mean log retention
        p_trait=[float(v) for v in logs["p_trait"].mean(axis=1)],
        panel_share=[float(v) for v in logs["panel_share"].mean(axis=1)],
    )
    return {"base": base, "controlled": controlled, "controlled_per_draw": per_draw_controlled}


def _summary(values: np.ndarray) -> Summary:
    return Summary.model_validate(summarize(values))


def table_rows(results: PruningResults) -> list[dict[str, Any]]:
    """One flat row per (fraction, criterion) for the parquet table."""
    rows = []
    for s in results.steps:
        row: dict[str, Any] = {
            "fraction": s.fraction,
            "criterion": s.criterion,
            "n_kept": s.n_kept,
            "n_pruned": s.n_pruned,
            "n_draws": s.n_draws,
        }
        for level, summary in (("p_trait", s.p_trait), ("panel_share", s.panel_share)):
            row[level], row[f"{level}_ci_low"], row[f"{level}_ci_high"] = summary.mean, summary.ci_low, summary.ci_high
        rate = s.answer_rate
        row["answer_rate"], row["answer_rate_ci_low"], row["answer_rate_ci_high"] = (
            (rate.rate, rate.ci_low, rate.ci_high) if rate else (None, None, None)
        )
        kinds: list[tuple[str, Retention | Controlled | None]] = [
            ("retention", s.retention),
            ("controlled", s.controlled),
        ]
        for kind, entries in kinds:
            if entries is None:
                continue
            for name in ("p_trait", "panel_share", "answer_rate"):
                r = getattr(entries, name)
                row[f"{name}_{kind}"], row[f"{name}_{kind}_ci_low"], row[f"{name}_{kind}_ci_high"] = (
                    (r.ratio, r.ci_low, r.ci_high) if r is not None else (None, None, None)
                )
        ppl = s.perplexity
        row["perplexity"], row["perplexity_ratio"] = (ppl.mean, ppl.ratio) if ppl else (None, None)
        base_ppl = s.base.perplexity if s.base else None
        row["base_perplexity"], row["base_perplexity_ratio"] = (
            (base_ppl.mean, base_ppl.ratio) if base_ppl else (None, None)
        )
        rows.append(row)
    return rows
