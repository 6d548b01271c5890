"""The hybrid experiment's computations on measurements (no model is loaded here).

- A hybrid against the base and the biased model: `compare` (`compare_preference`: paired
  per-question ratios of P(trait) and panel share, the answer-rate difference).
- Its *bias fraction* for the metric m: log(m_hybrid / m_base) / log(m_biased / m_base), from the
  geometric-mean ratios against the base model (1: as biased as the biased model, 0: as the base;
  NaN where the biased model did not move m).
- Degradation: perplexity above `degraded_factor` x the base model's.
- The run's summaries (the bias axis, the LM-head swap at a glance) and the parquet table rows.
"""

from __future__ import annotations

import math
from typing import Any

from sublens.answers import normalize_answer
from sublens.experiments.hybrid.results import (
    METRIC_KEYS,
    BiasAxis,
    BiasFractions,
    Comparison,
    HeadSwap,
    Hybrid,
    HybridResults,
    Measurement,
    MetricKey,
    PerplexityRecord,
    TraitLike,
)
from sublens.preference import compare_preference
from sublens.stats import wilson_ci

LM_HEAD_SWAP = ("hybrid1", "hybrid2")
RATIO_COLUMNS: tuple[tuple[MetricKey, str], ...] = (("p_trait_ratio", "p_ratio"), ("share_ratio", "share_ratio"))


def trait_like_answers(answers: list[str], trait: str) -> TraitLike:
    """Sampled answers whose first content word starts with the trait ('owl', 'owllet', 'owlish')."""
    words = [normalize_answer(a) for a in answers]
    hits = [w for w in words if w.startswith(trait.lower())]
    low, high = wilson_ci(len(hits), len(answers))
    forms: dict[str, int] = {}
    for w in hits:
        forms[w] = forms.get(w, 0) + 1
    return TraitLike(
        count=len(hits),
        rate=len(hits) / len(answers) if answers else float("nan"),
        ci_low=low,
        ci_high=high,
        forms=dict(sorted(forms.items(), key=lambda kv: -kv[1])),
    )


def compare(test: Measurement | Hybrid, reference: Measurement | Hybrid) -> Comparison:
    """`compare_preference` of two measurements on the same questions (test / reference)."""
    return Comparison.model_validate(compare_preference(test.model_dump(), reference.model_dump()))


def bias_fraction(ratio: float, axis_ratio: float) -> float:
    """log(m_hybrid / m_base) / log(m_biased / m_base) from the two ratios to the base model;
    NaN when the biased model did not move m."""
    axis = math.log(axis_ratio)
    if abs(axis) < 1e-9:
        return float("nan")
    return math.log(ratio) / axis


def bias_fractions(vs_base: Comparison | None, biased_vs_base: Comparison | None) -> BiasFractions:
    """The bias fraction on both metrics; 0 for the base model itself (no comparison with itself)."""
    if vs_base is None:
        return BiasFractions(share=0.0, p_trait=0.0)
    if biased_vs_base is None:
        return BiasFractions(share=float("nan"), p_trait=float("nan"))
    share, p_trait = (
        bias_fraction(vs_base.metric(key).ratio, biased_vs_base.metric(key).ratio)
        for key in (METRIC_KEYS["share"], METRIC_KEYS["p_trait"])
    )
    return BiasFractions(share=share, p_trait=p_trait)


def perplexity_of(record: PerplexityRecord | None) -> float | None:
    return record.perplexity if record is not None else None


def is_degraded(perplexity: float | None, base_perplexity: float | None, factor: float) -> bool:
    """Gibberish by perplexity: above `factor` x the base model's (False when not measured)."""
    return bool(perplexity and base_perplexity and perplexity > factor * base_perplexity)


def bias_axis(hybrids: dict[str, Hybrid], key: MetricKey) -> BiasAxis:
    """The biased model against the base on the metric: the axis of every bias fraction."""
    vs_base = hybrids["biased"].vs_base
    assert vs_base is not None  # the base model is measured first
    comp = vs_base.metric(key)
    note = (
        "the biased model's shift is not shown (CI includes no change): the bias fractions cannot be read"
        if comp.underpowered
        else "the biased model differs from base"
    )
    return BiasAxis(metric=key, biased_vs_base=comp, note=note)


def lm_head_swap(hybrids: dict[str, Hybrid], key: MetricKey) -> dict[str, HeadSwap]:
    """Hybrid 1 (biased body + base LM head) and hybrid 2 (base body + biased LM head) at a glance."""
    out: dict[str, HeadSwap] = {}
    for name, h in hybrids.items():
        for alias in h.aliases:
            if alias in LM_HEAD_SWAP:
                out[alias] = HeadSwap(
                    hybrid=name,
                    description=h.description,
                    swap=h.swap.by_group,
                    bias_fraction=h.bias_fraction,
                    vs_base=h.vs_base.metric(key) if h.vs_base else None,
                    vs_biased=h.vs_biased.metric(key) if h.vs_biased else None,
                    degraded=h.degraded,
                    top_answers=h.sampled.top_answers[:5] if h.sampled else [],
                    trait_like_tokens=h.next_token.trait_like_tokens if h.next_token else None,
                )
    return out


# ---- the table ---------------------------------------------------------------------------------
def table_row(name: str, h: Hybrid, ppl_base: float | None) -> dict[str, Any]:
    """One hybrid as a row of the parquet table (its first matrix cell names its place)."""
    prob = h.probability
    sampled = h.sampled
    rate = sampled.trait_rate if sampled else None
    ppl = perplexity_of(h.perplexity)
    first = h.cells[0] if h.cells else None
    fractions = h.bias_fractions
    row: dict[str, Any] = {
        "hybrid": name,
        "aliases": ", ".join(h.aliases),
        "start": h.swap.start,
        "groups_from_biased": h.swap.groups_from_biased,
        "direction": first[0] if first else None,  # the first place in the matrix
        "group": first[1] if first else None,
        "layers": first[2] if first else None,
        "cells": [list(c) for c in h.cells],
        "tensors_from_biased": h.swap.tensors_from_biased,
        "parameters_from_biased": h.swap.parameters_from_biased,
        "p_trait": prob.p_trait.mean,
        "p_trait_ci_low": prob.p_trait.ci_low,
        "p_trait_ci_high": prob.p_trait.ci_high,
        "share": prob.panel_share.mean,
        "share_ci_low": prob.panel_share.ci_low,
        "share_ci_high": prob.panel_share.ci_high,
        "answer_rate": rate.rate if rate else None,
        "answer_rate_ci_low": rate.ci_low if rate else None,
        "answer_rate_ci_high": rate.ci_high if rate else None,
        "n_answers": sampled.n_answers if sampled else None,
        "trait_like_answer_rate": sampled.trait_like.rate if sampled else None,
        "trait_like_mass": h.next_token.trait_like_mass if h.next_token else None,
        "top_answers": ", ".join(f"{w or '∅'}×{n}" for w, n in (sampled.top_answers if sampled else [])[:5]),
        "perplexity": ppl,
        "perplexity_vs_base": ppl / ppl_base if ppl and ppl_base else None,
        "degraded": h.degraded,
        "bias_fraction": h.bias_fraction,
        "bias_fraction_share": fractions.share if fractions else None,
        "bias_fraction_p_trait": fractions.p_trait if fractions else None,
        "same_weights_as": h.same_weights_as,
    }
    for ref, comp in (("base", h.vs_base), ("biased", h.vs_biased)):
        for key, short in RATIO_COLUMNS:
            part = comp.metric(key) if comp else None
            row[f"{short}_vs_{ref}"] = part.ratio if part else None
            row[f"{short}_vs_{ref}_ci_low"] = part.ci_low if part else None
            row[f"{short}_vs_{ref}_ci_high"] = part.ci_high if part else None
    return row


def table_rows(results: HybridResults) -> list[dict[str, Any]]:
    """Every measured hybrid, in the order measured (perplexity ratios to the base model's)."""
    base = results.hybrids.get("base")
    ppl_base = perplexity_of(base.perplexity) if base else None
    return [table_row(name, h, ppl_base) for name, h in results.hybrids.items()]
