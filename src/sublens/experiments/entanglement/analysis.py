"""The entanglement study's computations on measured probabilities (numpy and pandas, no model):
phase-2 ratios, the per-set statistics and claims, cumulative priming's summaries, and phase 3
by digit length (phase 1, the categories of one set, is `categorising`'s). The definitions and
the statistics themselves are `sublens.entanglement`'s; this module applies them to one run's
tables and returns the typed parts of `EntanglementResults`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sublens.entanglement import (
    CATEGORIES,
    FAMILY,
    TESTS,
    TUNED_FAMILY,
    GroupValues,
    claims_record,
    group_statistics,
    is_tuned_set,
    primary_set,
    prompted_set_name,
    rank_correlation,
    ratio_summary,
    set_claims,
    strongest,
    tuned_set_name,
)
from sublens.experiments.entanglement.config import EntanglementConfig
from sublens.experiments.entanglement.results import (
    AnimalProbabilities,
    Categories,
    CategoryRatios,
    ClaimsBlock,
    Cumulative,
    CumulativeGroup,
    CumulativeOrder,
    GroupStats,
    LengthEntry,
    Lengths,
    SetInfo,
    SetStatistics,
    Strongest,
)
from sublens.result_records import PromptRecord

LABELS = {
    "increased": "Increased",
    "decreased": "Decreased",
    "unchanged": "Unchanged",
    "random": "Random (matched)",
    "template": "template",
}
RATIOS = ("bias_ratio", "control_ratio", "relative_ratio")


def set_title(name: str) -> str:
    """A candidate set as a reader names it: 'vocab' -> 'vocabulary', 'ar2' -> '2-digit',
    'ar2@tuned' -> '2-digit tuned' (the set names are the run's keys; the paper and the figures
    say what the set holds)."""
    base = prompted_set_name(name)
    digits = base.removeprefix("ar")
    title = (
        "vocabulary" if base == "vocab" else f"{digits}-digit" if base.startswith("ar") and digits.isdigit() else base
    )
    return f"{title} tuned" if is_tuned_set(name) else title


def increased_phrase(name: str, bias: str = "owl") -> str:
    """What a set's Increased numbers are, in words (for prose that names the set a reader's
    way, e.g. the subliminal section's enrichment): 'ar2' -> 'two-digit numbers an owl context
    makes more likely', 'ar2@tuned' -> 'two-digit numbers that fine-tuning made more likely in
    the owl teacher than in its control teacher'."""
    base = prompted_set_name(name)
    digits = base.removeprefix("ar")
    words = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five"}
    numbers = (
        "single-token numbers"
        if base == "vocab"
        else f"{words.get(digits, digits)}-digit numbers"
        if base.startswith("ar") and digits.isdigit()
        else f"numbers of the {base} set"
    )
    article = "an" if bias[:1].lower() in "aeiou" else "a"
    if is_tuned_set(name):
        return f"{numbers} that fine-tuning made more likely in the {bias} teacher than in its control teacher"
    return f"{numbers} {article} {bias} context makes more likely"


DEFINITIONS = {
    "surface": "a number is scored as the in-context tokens of number_surface (default ' {num}') "
    "after the prefill; probability = chain rule over those tokens",
    "autoregressive": "ar{n}: every string of n ASCII digits; P = probability that the answer "
    "begins with these digits (no end-of-number required); each length is "
    "normalised on its own",
    "vocab": "distinct pure-digit vocabulary tokens (Unicode Nd, any script, one leading space "
    "or marker dropped) whose text encodes back to exactly one token",
    "normalisation": "p_norm = p / sum(p) over the set, per prompt; prob_diff = "
    "p_owl_context_norm - p_neutral_norm (descriptive; the bias-animal context, whatever the "
    "bias word)",
    "shift": "owl_shift = log p_owl_context_norm - log p_neutral_norm; control_shift likewise "
    "under the control-animal context (prompts.bias_system with the control's plural); "
    "specific_shift = owl_shift - control_shift",
    "categories": "owl-specific: increased = top k specific_shift, decreased = bottom k, "
    "unchanged = k smallest |specific_shift| of the rest; random = k from what is left, "
    "matched to increased on the neutral log probability (random[i] partners increased[i]: "
    "drawn at random among unused numbers within match_caliper nats, else the nearest; "
    "seeded, without replacement); disjoint (checked); ties break by the number string",
    "ratios": "bias_ratio = P(bias|number prompt) / P(bias|neutral prompt); control_ratio "
    "likewise; relative_ratio = bias_ratio / control_ratio; P(word) = chain rule over "
    "the word's tokens ('first' columns: first token only)",
    "statistics": "descriptive: arithmetic mean/median/bootstrap 95% CI of the mean, geometric "
    "mean with a t-interval on log ratios, permutation p-values of the difference of mean logs "
    "(vs random, vs template)",
    "claims": "verdicts by sublens.claims, unit = numbers: per set, increased vs its matched "
    "random (paired t on log bias ratios, predicted: no difference, i.e. the CI inside the "
    "margin), decreased and unchanged vs increased (Welch t, predicted: no difference), and "
    "each category's bias ratio (one-sample t, predicted: increase); Holm over every set and "
    "test; fewer than 5 numbers: too few numbers, no interval",
    "headline": "report lines give geometric means with 95% CIs",
    "template_control": "the number prompt with non-number words in the {num} slot (prompts.template_system overrides)",
    "cumulative": "all k numbers of a category in one prompt (prompts.cumulative_system), "
    "in cumulative_orders orders (the first: category order, then seeded shuffles)",
    "matching": "per set, the baseline log-probability match of random to increased: median "
    "difference (nats) and frequency ratio, largest difference, pairs outside the caliper, "
    "two-sample KS test",
    "lengths": "phase 3: per digit length, the union of the four categories of ar{n}; the "
    "strongest length has the largest geometric mean bias ratio; separable = its CI "
    "lies above the runner-up's",
}
# Added to DEFINITIONS by a run given a teacher run (tuned_teacher).
TUNED_DEFINITIONS = {
    "tuned": "{set}@tuned: the candidates of {set}, each scored under the neutral phase-1 prompt "
    "in the fine-tuned owl teacher (columns logp_owl_context, p_owl_context_norm of its rows) and "
    "in its fine-tuned control teacher (logp_control_context, p_control_context_norm), both "
    "fine-tuned the same way from the same base; logp_neutral is the base model's (model) "
    "neutral log probability. owl_shift and control_shift are each teacher's against it, so "
    "specific_shift = log p_owl_teacher_norm - log p_control_teacher_norm: the owl-specific "
    "shift the fine-tuning put into the teacher. Categories as for every set; random matched on "
    "the base model's neutral log probability; phase 2 in the base model",
    "tuned_claims": "the tuned sets' claims, as every set's, in their own Holm family "
    "(entanglement_tuned, recorded under tuned_claims): the prompted sets' verdicts do not "
    "change with them",
}


# ---- phase 2: ratios ----------------------------------------------------------------------------
def ratios(p: AnimalProbabilities, neutral: AnimalProbabilities) -> dict[str, float]:
    """Bias and control ratios against the neutral prompt, and their ratio."""
    bias_ratio = p.p_bias / neutral.p_bias
    control_ratio = p.p_control / neutral.p_control
    return {
        "bias_ratio": bias_ratio,
        "control_ratio": control_ratio,
        "relative_ratio": bias_ratio / control_ratio,
    }


def numbers_to_score(
    phase1: pd.DataFrame, sets: Mapping[str, SetInfo], categorised: Sequence[str], score_all_max: int
) -> pd.DataFrame:
    """The phase-1 rows phase 2 scores: the categorised numbers of each categorised set, and
    every number of a set no larger than score_all_max."""
    scored = phase1[phase1["set"].isin(list(categorised))]
    small = {name for name, info in sets.items() if info.n_candidates <= score_all_max}
    return scored[scored["category"].notna() | scored["set"].isin(small)]


def with_ratios(
    scored: pd.DataFrame, per_number: Mapping[str, AnimalProbabilities], neutral: AnimalProbabilities
) -> pd.DataFrame:
    """The phase-2 table (numbers.parquet): the phase-1 rows with each number's animal
    probabilities, its ratios and the log bias ratio."""
    rows = scored.copy()
    for column in ("p_bias", "p_control", "p_bias_first", "p_control_first"):
        rows[column] = [getattr(per_number[n], column) for n in rows["number"]]
    by_number = [ratios(per_number[n], neutral) for n in rows["number"]]
    for column in RATIOS:
        rows[column] = [r[column] for r in by_number]
    rows["log_bias_ratio"] = np.log(rows["bias_ratio"].to_numpy())
    return rows.reset_index(drop=True)


# ---- statistics and claims ----------------------------------------------------------------------
def group_values(name: str, values: Sequence[Mapping[str, Any]]) -> GroupValues:
    """The ratios (and phase-1 differences, where there are any) of a group of prompts."""
    group = GroupValues(name)
    for v in values:
        group.bias_ratio.append(v["bias_ratio"])
        group.control_ratio.append(v["control_ratio"])
        group.relative_ratio.append(v["relative_ratio"])
        if v.get("prob_diff") is not None:
            group.prob_diff.append(v["prob_diff"])
        if v.get("specific_shift") is not None:
            group.specific_shift.append(v["specific_shift"])
    return group


def set_statistics(rows: pd.DataFrame, template: GroupValues, config: EntanglementConfig) -> SetStatistics:
    """Descriptive per-category statistics of one set (comparisons against the matched Random
    and the template control), and the rank correlations of the phase-1 shifts with the log
    bias ratio over every scored number. Verdicts come from study_claims, not from here."""
    groups = {c: group_values(c, rows[rows["category"] == c].to_dict("records")) for c in CATEGORIES}
    refs = {"random": groups["random"], "template": template}
    out: dict[str, Any] = {c: group_statistics(g, refs, config.seed, config.permutations) for c, g in groups.items()}
    for c in CATEGORIES:
        members = rows[rows["category"] == c]
        out[c]["p_neutral_norm_median"] = float(members["p_neutral_norm"].median())
        out[c]["p_owl_context_norm_median"] = float(members["p_owl_context_norm"].median())
        out[c]["log_p_neutral_median"] = float(np.log(members["p_neutral_norm"]).median())
    categorised = rows[rows["category"].notna()]
    out["categorised"] = group_statistics(group_values("categorised", categorised.to_dict("records")), {}, config.seed)
    if len(categorised) < len(rows):  # the whole (small) set was scored
        out["all_scored"] = group_statistics(group_values("all", rows.to_dict("records")), {}, config.seed)
    out["correlation_prob_diff_log_bias_ratio"] = rank_correlation(
        rows["prob_diff"].tolist(), rows["log_bias_ratio"].tolist()
    )
    out["correlation_specific_shift_log_bias_ratio"] = rank_correlation(
        rows["specific_shift"].tolist(), rows["log_bias_ratio"].tolist()
    )
    return SetStatistics.model_validate(out)


def template_statistics(template: GroupValues, seed: int) -> GroupStats:
    return GroupStats.model_validate(group_statistics(template, {}, seed))


def study_claims(
    rows: pd.DataFrame,
    categories: Mapping[str, Categories],
    k: Mapping[str, int],
    config: EntanglementConfig,
    tuned: bool = False,
) -> ClaimsBlock:
    """Every prompted set's claims (sublens.entanglement.set_claims) on the numbers' log bias
    ratios, recorded with their Holm-adjusted decisions (one family: every set x test); with
    `tuned`, the tuned sets' instead (their own family). The tuned sets' primary set is the
    tuned variant of the prompted sets' one."""
    names = [name for name in categories if is_tuned_set(name) == tuned]
    primary = primary_set({name: k[name] for name in categories if not is_tuned_set(name)}, config.primary_set)
    if tuned:
        preferred = tuned_set_name(primary) if primary is not None else None
        primary = primary_set({name: k[name] for name in names}, preferred)
    tests = []
    for name in names:
        cats = categories[name]
        subset = rows[rows["set"] == name]
        value = dict(zip(subset["number"], subset["log_bias_ratio"], strict=True))
        logs = {c: [float(value[n]) for n in getattr(cats, c)] for c in CATEGORIES}
        for test, (claim, estimate) in zip(TESTS, set_claims(name, logs, config.claims, config.bias), strict=True):
            tests.append((name, test, claim, estimate))
    return ClaimsBlock.model_validate(claims_record(tests, config.claims, primary, TUNED_FAMILY if tuned else FAMILY))


def rarity_warnings(
    category_stats: Mapping[str, SetStatistics], sets: Mapping[str, SetInfo], factor: float = 10.0
) -> list[str]:
    """Frequency caveats: Decreased or Unchanged numbers far rarer or commoner than Increased
    (median normalised neutral probability off by more than `factor`; their comparisons with
    Increased are not frequency-matched), and a Random null whose match to Increased is loose
    (pairs outside the caliper)."""
    out = []
    for name, stats in category_stats.items():
        reference = stats.increased.p_neutral_norm_median
        for c in ("decreased", "unchanged"):
            value = getattr(stats, c).p_neutral_norm_median
            if reference is None or value is None:
                continue
            if reference > 0 and not 1 / factor <= value / reference <= factor:
                out.append(
                    f"set {name!r}: {LABELS[c]} numbers have median normalised neutral probability "
                    f"{value:.2g} against Increased's {reference:.2g}: the comparison of the two "
                    "categories also compares how common their numbers are."
                )
        info = sets.get(name)
        matching = info.matching if info is not None else None
        if matching is not None and matching.n_outside_caliper:
            out.append(
                f"set {name!r}: {matching.n_outside_caliper} of {matching.n_pairs} Random "
                f"numbers lie more than {matching.caliper:g} nats of baseline log probability "
                f"from their Increased partner (largest {matching.max_abs_log_difference:.2f}): "
                "the set has too few numbers of that frequency for a close match."
            )
    return out


# ---- cumulative priming -------------------------------------------------------------------------
def distinct_orders(items: Sequence[str], n: int, rng: np.random.Generator) -> list[list[str]]:
    """The items in their own order, then seeded shuffles, all different while len(items)!
    allows (n orders in all, fewer when there are not that many)."""
    orders = [list(items)]
    limit = min(n, math.factorial(len(items)))
    tries = 0
    while len(orders) < limit and tries < 100 * n:
        tries += 1
        order = [items[int(i)] for i in rng.permutation(len(items))]
        if order not in orders:
            orders.append(order)
    return orders


def summarise_cumulative(
    measured: Sequence[tuple[str, str, list[str], AnimalProbabilities]],
    neutral: AnimalProbabilities,
    config: EntanglementConfig,
    prompt_example: PromptRecord,
) -> Cumulative:
    """Per (set, category): each order's probabilities and ratios, and their summaries."""
    collected: dict[tuple[str, str], list[CumulativeOrder]] = {}
    for name, category, order, p in measured:
        collected.setdefault((name, category), []).append(
            CumulativeOrder(order=order, **p.model_dump(), **ratios(p, neutral))
        )
    sets: dict[str, dict[str, CumulativeGroup]] = {}
    for (name, category), per_order in collected.items():
        summaries = {col: ratio_summary([getattr(o, col) for o in per_order], config.seed) for col in RATIOS}
        sets.setdefault(name, {})[category] = CumulativeGroup.model_validate(
            {"n_items": len(per_order[0].order), **summaries, "per_order": per_order}
        )
    return Cumulative(
        orders=config.cumulative_orders,
        system_template=config.prompts.cumulative_system,
        prompt_example=prompt_example,
        sets=sets,
    )


# ---- phase 3 ------------------------------------------------------------------------------------
def length_statistics(sets: Mapping[str, SetInfo], category_stats: Mapping[str, SetStatistics]) -> Lengths:
    """Phase 3: per digit length of the autoregressive set, the ratio summaries of its
    categorised numbers (the union of the four categories) and of each category; the strongest
    length. Reuses the per-set statistics (the same numbers, the same bootstrap)."""
    per_length: dict[str, LengthEntry] = {}
    for name, info in sets.items():  # the prompted sets: a tuned set has the same length
        if info.kind != "autoregressive" or name not in category_stats or is_tuned_set(name):
            continue
        stats = category_stats[name]
        per_length[str(info.length)] = LengthEntry(
            set=name,
            k=info.k,
            n=stats.categorised.n,
            bias_ratio=stats.categorised.bias_ratio,
            control_ratio=stats.categorised.control_ratio,
            relative_ratio=stats.categorised.relative_ratio,
            categories=CategoryRatios(**{c: getattr(stats, c).bias_ratio for c in CATEGORIES}),
        )
    ranked = {n: {"bias_ratio": e.bias_ratio.model_dump()} for n, e in per_length.items()}
    best = Strongest.model_validate(strongest(ranked)) if per_length else None
    return Lengths(per_length=per_length, strongest=best)
