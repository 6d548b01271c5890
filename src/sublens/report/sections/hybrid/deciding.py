"""The hybrid claims, decided in `sublens.claims` (family ``hybrid``, questions as the unit):
the bias is not in the LM head, the MLP layers carry more of it than the attention layers by
transplant, and patching MLP outputs carries more of it than patching attention outputs;
each refined where it rests on a degraded hybrid or a biased model not distinguishable from
the base."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sublens.claims import (
    Claim,
    ClaimSettings,
    Decision,
    bias_too_small,
    decide_family,
    estimate_log_ratio,
    unless_bias_to_lose,
)
from sublens.experiments.hybrid.results import (
    DIRECTIONS,
    Hybrid,
    HybridResults,
    MetricKey,
    Patching,
)
from sublens.report.sections.hybrid.reading import METRIC_NAMES, _axis
from sublens.results import as_results

# ---- claims (decided by sublens.claims) -----------------------------------------------------
FAMILY = "hybrid"
DIRECTION_WORDS = {"into_base": "biased into base", "into_biased": "base into biased"}


def _settings(value: Any) -> ClaimSettings:
    if isinstance(value, ClaimSettings):
        return value
    try:
        return ClaimSettings.model_validate(value or {})
    except ValueError:
        return ClaimSettings()


def _metric_words(results: HybridResults | None) -> tuple[MetricKey, str]:
    """(compare_preference key, words) of the run's bias metric."""
    key = results.metric_key() if results is not None else "share_ratio"
    return key, METRIC_NAMES[key].format(trait=results.trait if results is not None else "owl")


def _hybrid(hybrids: Mapping[str, Hybrid], direction: str, group: str) -> Hybrid | None:
    """The hybrid measured in a whole-group matrix cell (merged hybrids fill several)."""
    for h in hybrids.values():
        if any(c == (direction, group, "all") for c in h.cells):
            return h
    return None


def _per_question(h: Hybrid | None, key: MetricKey) -> np.ndarray | None:
    """A hybrid's per-question metric (panel share or P(trait)); None when not recorded."""
    if h is None:
        return None
    per = h.probability.per_question
    try:
        values = (
            np.asarray(per.share, dtype=float) if key == "share_ratio" else np.asarray(per.p_word, dtype=float)[:, 0]
        )
    except (IndexError, ValueError):
        return None
    return values if values.size and np.all(values > 0) else None


def swap_effects(results: HybridResults, group: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per direction, the per-question log effect of the biased `group` on the run's metric:
    into_base log(m[base + biased group] / m[base]), into_biased log(m[biased] / m[biased + base group]);
    and the directions resting on a degraded hybrid."""
    hybrids = results.hybrids
    key, _ = _metric_words(results)
    base, biased = _per_question(hybrids.get("base"), key), _per_question(hybrids.get("biased"), key)
    out: dict[str, np.ndarray] = {}
    degraded: list[str] = []
    for direction in DIRECTIONS:
        h = _hybrid(hybrids, direction, group)
        values = _per_question(h, key)
        if values is None or base is None or biased is None or not values.size == base.size == biased.size:
            continue
        out[direction] = np.log(values / base) if direction == "into_base" else np.log(biased / values)
        if h is not None and h.degraded:
            degraded.append(direction)
    return out, degraded


def _main_effect(effects: dict[str, np.ndarray]) -> np.ndarray | None:
    """Mean over the measured directions of the per-question log effects (the component's main
    effect in the 2 x 2 swap design when both directions are there)."""
    if not effects:
        return None
    return np.mean(np.stack(list(effects.values())), axis=0)


def claims(results: HybridResults | None, settings: ClaimSettings | None = None) -> dict[str, Claim]:
    """The hybrid run's three claims (family "hybrid"), worded for the run's metric."""
    s = _settings(settings)
    _, metric = _metric_words(results)
    trait = results.trait if results is not None else "owl"
    foil = results.patching.tokens.foil[0] if results is not None and results.patching is not None else "dog"
    return {
        "lm_head": Claim(
            name="localisation.lm_head",
            statement="The bias is not in the LM head",
            estimand=(
                f"the LM head's effect on {metric}: per question, the geometric mean of (base body + "
                "biased LM head) over the base model and of the biased model over (biased body + base "
                "LM head), i.e. the LM head's main effect in the body × head swap"
            ),
            unit="question",
            prediction="none",
            family=FAMILY,
            settings=s,
        ),
        "transplant": Claim(
            name="localisation.transplant",
            statement="The bias is seated in the MLP layers (by transplant): transplanting the MLP layers "
            "moves it more than transplanting the attention layers",
            estimand=(
                f"per question, the MLP transplant's effect on {metric} over the attention "
                "transplant's, each the geometric mean of bringing the biased component (all layers) "
                "into the base model and of removing it from the biased model"
            ),
            unit="question",
            prediction="increase",
            family=FAMILY,
            settings=s,
        ),
        "patching": Claim(
            name="localisation.patching",
            statement="Patching MLP outputs carries the bias more than patching attention outputs",
            estimand=(
                f"per question, the {trait}:{foil} odds at the prefilled answer with every layer's MLP "
                "outputs patched over those with every layer's attention outputs patched (biased "
                "outputs into the base run; for base outputs into the biased run the inverse), "
                "geometric mean over the patched directions"
            ),
            unit="question",
            prediction="increase",
            family=FAMILY,
            settings=s,
        ),
    }


def _no_bias(results: HybridResults) -> str | None:
    """Why the biased model shows no bias to locate on the run's metric, or None."""
    key, metric = _metric_words(results)
    axis = _axis(results.hybrids, key)
    if axis is None:
        return "the biased model was not compared with the base model"
    if axis.underpowered:
        return (
            f"no bias shown to locate: the CI of the biased model's {metric} over the base model's includes no change"
        )
    return None


def patching_contrast(patching: Patching | None) -> tuple[np.ndarray | None, list[str]]:
    """Per question, the log odds contrast MLP-patched minus attention-patched over the whole depth,
    averaged over the patched directions (into_biased sign-reversed: removing more = carrying more)."""
    patched = patching.logit_difference.patched if patching is not None else {}
    values: list[np.ndarray] = []
    used: list[str] = []
    for direction in DIRECTIONS:
        by = patched.get(direction) or {}
        mlp, attn = (by.get("mlp") or {}).get("all"), (by.get("attention") or {}).get("all")
        if not mlp or not attn or len(mlp) != len(attn):
            continue
        diff = np.asarray(mlp, dtype=float) - np.asarray(attn, dtype=float)
        values.append(diff if direction == "into_base" else -diff)
        used.append(direction)
    if not values or len({v.size for v in values}) != 1:
        return None, []
    return np.mean(np.stack(values), axis=0), used


def _unless_bias_to_lose(decision: Decision, results: HybridResults) -> Decision:
    """ "Not in the LM head" (a null) needs a bias large against the margin: with a ×1.15 bias, an
    LM-head effect inside ×1.25 can be all of it (`sublens.claims.bias_too_small`)."""
    key, metric = _metric_words(results)
    axis = _axis(results.hybrids, key)
    margin = decision.claim.settings.margin
    whose = f"the biased model's {metric} over the base model's"
    return unless_bias_to_lose(decision, bias_too_small(axis, margin, whose), margin)


def _refine(decision: Decision, reason: str, settle: str) -> Decision:
    """A claim that could not be measured: the verdict stays claims.decide's, the reason is ours
    ('not measured (why)': the paper prints the verdict 'inconclusive (not measured)' and the why)."""
    return decision.model_copy(update={"reason": reason, "settle": settle})


def decisions(results: HybridResults | Mapping[str, Any], settings: ClaimSettings | Any = None) -> list[Decision]:
    """The verdicts of the hybrid claims from recorded results, Holm within the family "hybrid":
    localisation.lm_head, localisation.transplant, localisation.patching (in that order)."""
    results = as_results(results, HybridResults)
    the = claims(results, _settings(settings))
    head, head_bad = swap_effects(results, "lm_head")
    mlp, mlp_bad = swap_effects(results, "mlp")
    attn, attn_bad = swap_effects(results, "attention")
    no_bias = _no_bias(results)
    head_values = _main_effect(head) if not head_bad and no_bias is None else None
    common = [d for d in DIRECTIONS if d in mlp and d in attn]
    transplant_values = None
    if common and not (mlp_bad or attn_bad) and no_bias is None:
        transplant_values = np.mean(np.stack([mlp[d] - attn[d] for d in common]), axis=0)
    patching = results.patching
    contrast, _ = patching_contrast(patching)
    gap = patching.gap if patching is not None else None
    gap_ok = gap is not None and gap.ci_low is not None and (gap.ci_low > 0 or (gap.ci_high or 0) < 0)
    patch_values = contrast if contrast is not None and gap_ok else None
    estimates = [
        estimate_log_ratio(v.tolist(), "question") if v is not None else None
        for v in (head_values, transplant_values, patch_values)
    ]
    out = decide_family(list(zip(the.values(), estimates, strict=True)))
    head_d, transplant_d, patch_d = out
    head_d = _unless_bias_to_lose(head_d, results)
    if head_values is None:
        why = no_bias or (
            "a swapped model is degraded (perplexity): not evidence"
            if head_bad
            else "not measured (the LM-head swap is missing)"
        )
        head_d = _refine(
            head_d, why, "a biased model that differs from the base, measured with both LM-head swaps undegraded"
        )
    if transplant_values is None:
        why = no_bias or (
            "an MLP or attention transplant is degraded (perplexity): not evidence"
            if mlp_bad or attn_bad
            else "not measured (the whole-group MLP and attention transplants of one direction are missing)"
        )
        transplant_d = _refine(
            transplant_d,
            why,
            "the MLP and attention transplants of at least one direction, "
            "undegraded, on a biased model that differs from the base",
        )
    if patch_values is None:
        if not patching:
            why = "not measured (activation patching was not run)"
            settle = "rerun the hybrid stage with activation patching switched on"
        elif contrast is None:
            why = "not measured (the whole-depth MLP and attention patches are missing)"
            settle = "patch every layer's MLP and attention outputs in at least one direction"
        else:
            why = "no gap shown to patch: the CI of the gap between the biased and base logit differences includes 0"
            settle = "a biased model whose logit difference differs from the base model's"
        patch_d = _refine(patch_d, why, settle)
    return [head_d, transplant_d, patch_d]
