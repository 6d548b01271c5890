"""Phase 1 of the entanglement study on one candidate set (numpy and pandas, no model): the
set's numbers normalised on their own, their owl-specific shifts, the disjoint categories with
Random matched to Increased, and the set's description. Kept apart from `analysis` because it
is the one step that works on a whole candidate set before anything is scored in phase 2; the
definitions (`form_categories`, `specific_shift`, ...) are `sublens.entanglement`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sublens.entanglement import (
    KChoice,
    choose_k,
    form_categories,
    matching_quality,
    normalize_logprobs,
    number_script,
    specific_shift,
)
from sublens.experiments.entanglement.config import EntanglementConfig, SetKind
from sublens.experiments.entanglement.results import Categories, Matching, SetInfo


@dataclass(frozen=True)
class CandidateSet:
    """A set of candidate numbers, normalised and categorised on its own."""

    name: str  # "vocab", "ar1", "ar2", ...; "ar2@tuned": by the fine-tuned teachers' shift
    kind: SetKind
    length: int | None  # digits of an autoregressive set
    numbers: list[str]
    info: dict[str, Any]  # VocabularyNumbers.describe(), or n_numbers and leading_zeros; tuned_from


@dataclass(frozen=True)
class ContextScores:
    """Log P of each of a set's numbers (chain rule over its surface's tokens) after the three
    phase-1 prompts, and how many tokens each surface has. A tuned set's: the base model's
    neutral prompt, then the neutral prompt in the fine-tuned owl teacher and in its control
    teacher in place of the two animal contexts."""

    neutral: np.ndarray
    owl_context: np.ndarray  # the bias animal's context (tuned set: the owl teacher)
    control_context: np.ndarray  # the control animal's context (tuned set: the control teacher)
    n_tokens: list[int]


def _categories_and_matching(
    name: str,
    numbers: list[str],
    shift: np.ndarray,
    baseline: np.ndarray,
    k: int,
    config: EntanglementConfig,
) -> tuple[dict[str, list[str]], Matching | None]:
    """The set's categories of k numbers each and how closely Random matches Increased on the
    baseline log probability; k = 0 (too few candidates): no categories, no matching."""
    if not k:
        return {}, None
    categories = form_categories(
        numbers, shift, k, config.seed, salt=name, baseline=baseline, caliper=config.match_caliper
    )
    index = {n: i for i, n in enumerate(numbers)}
    matching = Matching.model_validate(
        matching_quality(
            [baseline[index[n]] for n in categories["increased"]],
            [baseline[index[n]] for n in categories["random"]],
            config.match_caliper,
        )
    )
    return categories, matching


def _matched_partners(categories: dict[str, list[str]]) -> dict[str, str]:
    """Random[i] <-> Increased[i] in both directions: the table's matched_to column names each
    number's partner from either side."""
    partner = dict(zip(categories.get("random", []), categories.get("increased", []), strict=True))
    partner.update({v: k for k, v in partner.items()})
    return partner


def _set_info(candidates: CandidateSet, choice: KChoice, scores: ContextScores, matching: Matching | None) -> SetInfo:
    """The set's description: what it holds, the k it got and the probability mass it covers."""
    return SetInfo(
        **candidates.info,
        kind=candidates.kind,
        length=candidates.length,
        n_candidates=len(candidates.numbers),
        k_requested=choice.requested,
        k=choice.used,
        skipped=choice.skipped,
        # How much of each prompt's next-answer probability the set covers (for ar{n}: P(the
        # answer begins with n digits)).
        mass_neutral=float(np.exp(scores.neutral).sum()),
        mass_owl_context=float(np.exp(scores.owl_context).sum()),
        mass_control_context=float(np.exp(scores.control_context).sum()),
        matching=matching,
        warning=choice.warning,
    )


def categorise_set(
    candidates: CandidateSet, surfaces: list[str], scores: ContextScores, config: EntanglementConfig
) -> tuple[pd.DataFrame, Categories | None, SetInfo]:
    """The set's phase-1 table (normalised probabilities, shifts, categories), its categories
    (None: too few candidates, the set is skipped) and its description."""
    name, numbers = candidates.name, candidates.numbers
    logp_n, logp_b, logp_c = scores.neutral, scores.owl_context, scores.control_context
    p_n, p_b, p_c = (normalize_logprobs(x) for x in (logp_n, logp_b, logp_c))
    shifts = specific_shift(logp_n, logp_b, logp_c)
    choice = choose_k(name, len(numbers), config.k, config.min_k)
    categories, matching = _categories_and_matching(
        name, numbers, shifts["specific_shift"], np.log(p_n), choice.used, config
    )
    category_of = {n: c for c, members in categories.items() for n in members}
    partner = _matched_partners(categories)
    frame = pd.DataFrame(
        {
            "set": name,
            "number": numbers,
            "n_digits": [len(n) for n in numbers],
            "script": [number_script(n) for n in numbers],
            "surface": surfaces,
            "n_tokens": scores.n_tokens,
            "logp_neutral": logp_n,
            "logp_owl_context": logp_b,
            "logp_control_context": logp_c,
            "p_neutral_norm": p_n,
            "p_owl_context_norm": p_b,
            "p_control_context_norm": p_c,
            "prob_diff": p_b - p_n,
            "owl_shift": shifts["owl_shift"],
            "control_shift": shifts["control_shift"],
            "specific_shift": shifts["specific_shift"],
            "category": [category_of.get(n) for n in numbers],
            "matched_to": [partner.get(n) for n in numbers],
        }
    )
    info = _set_info(candidates, choice, scores, matching)
    return frame, Categories.model_validate(categories) if categories else None, info
