"""Token entanglement, phases 1-3 (docs/design.md, "Measurements"): candidate number sets, disjoint
categories with a Random null control, and the statistics of bias ratios.

The research logic only; the experiment that runs a model through it is
``sublens.experiments.entanglement``.

Definitions (recorded in every run's results.json under "definitions"):

- **Candidate sets.** ``vocab``: every distinct pure-digit string that is a vocabulary token
  (all characters of Unicode category Nd, any script, after dropping one leading space or
  space marker), kept only if the string encodes back to exactly one token. ``ar{n}``: every
  string of n ASCII digits (leading zeros included by default: 10**n strings).
- **Surface form.** A number is scored as the text the answer would continue with after the
  prefill: ``" {num}"`` (leading space, because the prefill ends without one), tokenized in
  context; its probability is the chain-rule joint probability of those tokens. For ``ar{n}``
  this is the probability that the answer *begins* with these n digits (no end-of-number is
  required), so each length is its own set and is normalised on its own.
- **Normalisation.** Within each set, p_norm = p / sum(p) over the set's candidates, under
  each prompt separately; prob_diff = p_owl_context_norm - p_neutral_norm (descriptive).
- **Owl-specific shift.** owl_shift = log p_owl_context_norm - log p_neutral_norm, likewise
  control_shift under the control-animal context ("You love dogs..."), and specific_shift =
  owl_shift - control_shift (= log p_owl_context_norm - log p_control_context_norm): how much
  more the owl context moves a number than another animal's context does.
- **Categories.** Increased = the k largest specific_shift, Decreased = the k smallest,
  Unchanged = the k smallest |specific_shift| among the rest; Random = k numbers from what is
  left, matched to Increased on the neutral (baseline) log probability: for each Increased
  number in a seeded order, an unused number drawn at random among those within the caliper
  of its baseline log probability (the nearest unused one when none is), without replacement.
  Random[i] is the partner of Increased[i]. Ties break by the number string. Disjointness is
  checked; a violation raises.
- **Ratios.** bias_ratio = P(bias | number prompt) / P(bias | neutral prompt), control_ratio
  likewise for the control word, relative_ratio = bias_ratio / control_ratio. P(word) is the
  full chain-rule probability of " word" at the prefilled answer.
- **Statistics.** Descriptive: per category n, arithmetic mean, median, sd and bootstrap 95%
  CI of the mean, and the geometric mean with a t-interval on the log scale. Verdicts: the
  claims of ``entanglement_claims`` decided by ``sublens.claims`` (unit: numbers; Student t on
  log bias ratios: one-sample per category, paired for Increased vs its matched Random,
  Welch for two categories; Holm over every set and test).
"""

from __future__ import annotations

import math
import unicodedata
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
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
from sublens.errors import SublensError
from sublens.stats import bootstrap_diff_ci, log_ratio_interval, permutation_pvalue, summarize

CATEGORIES = ("increased", "decreased", "unchanged", "random")
SPACE_MARKERS = (" ", "\u2581", "\u0120")  # plain space, SentencePiece "▁", byte-level "Ġ"


class EntanglementError(SublensError):
    """A candidate set, category or statistic that cannot be formed as asked."""


class CategoryOverlapError(EntanglementError):
    """Two categories share a number: the study's categories must be disjoint."""


# ---------------------------------------------------------------------------------------------
# candidate sets


def digit_script(char: str) -> str:
    """The script of one decimal digit from its Unicode name: 'ARABIC-INDIC DIGIT THREE' ->
    'ARABIC-INDIC'; the ASCII digits ('DIGIT THREE') -> 'ASCII'."""
    name = unicodedata.name(char, "")
    head, sep, _ = name.partition(" DIGIT ")
    if not sep:
        return "ASCII" if name.startswith("DIGIT ") else "UNKNOWN"
    return head


def number_script(text: str) -> str:
    """The script of a digit string; 'MIXED' when its digits come from several scripts."""
    scripts = {digit_script(c) for c in text}
    return scripts.pop() if len(scripts) == 1 else "MIXED"


def is_digit_string(text: str) -> bool:
    """True for a non-empty string of decimal digits (Unicode category Nd, any script)."""
    return bool(text) and all(unicodedata.category(c) == "Nd" for c in text)


def _strip_space(text: str) -> str:
    return text[1:] if text[:1] in SPACE_MARKERS else text


@dataclass(frozen=True)
class VocabularyNumbers:
    """The pure-digit tokens of a vocabulary, as distinct digit strings."""

    numbers: tuple[str, ...]  # sorted; each encodes back to a single token
    token_ids: dict[str, tuple[int, ...]]  # number -> the vocabulary tokens that spell it
    scripts: dict[str, int]  # script -> how many of `numbers`
    rejected: dict[
        str, tuple[int, ...]
    ]  # digit tokens whose text does not encode back to one token
    vocabulary_size: int

    def describe(self) -> dict[str, Any]:
        return {
            "vocabulary_size": self.vocabulary_size,
            "n_numbers": len(self.numbers),
            "scripts": dict(sorted(self.scripts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "lengths": dict(sorted(Counter(len(n) for n in self.numbers).items())),
            "n_rejected": len(self.rejected),
            "rejected_examples": {n: list(ids) for n, ids in list(self.rejected.items())[:20]},
        }


def vocabulary_numbers(tokenizer: Any) -> VocabularyNumbers:
    """Every pure-digit token of the vocabulary, in any script (see module docstring).

    Each token is decoded on its own (so byte-level and SentencePiece markers are resolved by the
    tokenizer), one leading space is dropped, and the rest must be all decimal digits. A digit
    string is kept when encoding it (without special tokens) gives exactly one token.
    """
    size = len(tokenizer)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    ids = [i for i in range(size) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    spelled: dict[str, list[int]] = {}
    for i, text in zip(ids, texts, strict=True):
        digits = _strip_space(text)
        if is_digit_string(digits):
            spelled.setdefault(digits, []).append(i)
    kept: list[str] = []
    rejected: dict[str, tuple[int, ...]] = {}
    candidates = sorted(spelled)
    encoded = tokenizer(candidates, add_special_tokens=False)["input_ids"] if candidates else []
    for number, enc in zip(candidates, encoded, strict=True):
        if len(enc) == 1:
            kept.append(number)
        else:
            rejected[number] = tuple(int(t) for t in enc)
    scripts = Counter(number_script(n) for n in kept)
    return VocabularyNumbers(
        numbers=tuple(kept),
        token_ids={n: tuple(spelled[n]) for n in kept},
        scripts=dict(scripts),
        rejected=rejected,
        vocabulary_size=size,
    )


def autoregressive_numbers(length: int, leading_zeros: bool = True) -> list[str]:
    """Every string of `length` ASCII digits, in numeric order (10**length of them; without
    leading zeros 9 * 10**(length-1), plus "0" for length 1)."""
    if length < 1:
        raise EntanglementError(f"A digit length must be at least 1, got {length}.")
    numbers = ["".join(t) for t in product("0123456789", repeat=length)]
    if not leading_zeros:
        numbers = [n for n in numbers if len(n) == 1 or n[0] != "0"]
    return numbers


# ---------------------------------------------------------------------------------------------
# prompt templates (here, not in the experiment, so that the report, which must not import
# torch, fills them exactly as the run did)


def fill(template: str, **slots: str) -> str:
    """Put values into {slot}s by plain replacement (other braces are left alone)."""
    for name, value in slots.items():
        template = template.replace("{" + name + "}", value)
    return template


def animal_context(template: str, plural: str) -> str:
    """An animal context prompt for `plural` ("owls"): {plural}, and {Plural} capitalised."""
    return fill(template, plural=plural, Plural=plural[:1].upper() + plural[1:])


# ---------------------------------------------------------------------------------------------
# phase 1: normalisation and categories


def normalize_logprobs(logp: Sequence[float] | np.ndarray) -> np.ndarray:
    """log-probabilities [n] -> probabilities renormalised over the n candidates (float64)."""
    return np.exp(log_normalize(logp))


@dataclass(frozen=True)
class KChoice:
    """How many numbers per category a set of n candidates allows."""

    requested: int
    used: int  # 0: the set is skipped
    n_candidates: int
    warning: str | None
    skipped: str | None  # why the set is skipped, or None


def choose_k(name: str, n_candidates: int, k: int, min_k: int = 1) -> KChoice:
    """k per category for a set: four disjoint categories need 4k candidates. k shrinks to
    n // 4 with a warning; below min_k the set is skipped with the reason."""
    if k < 1 or min_k < 1:
        raise EntanglementError(f"k and min_k must be at least 1, got k={k}, min_k={min_k}.")
    fits = n_candidates // len(CATEGORIES)
    if fits < min_k:
        reason = (
            f"set {name!r} has {n_candidates} candidate(s): four disjoint categories of at least "
            f"{min_k} need {len(CATEGORIES) * min_k}; the set is skipped (lower min_k, or use a "
            "model whose vocabulary has more number tokens)."
        )
        return KChoice(k, 0, n_candidates, None, reason)
    if fits < k:
        warning = (
            f"set {name!r} has only {n_candidates} candidates: k shrinks from {k} to {fits} so "
            "that four disjoint categories fit; its statistics rest on very few numbers."
        )
        return KChoice(k, fits, n_candidates, warning, None)
    return KChoice(k, k, n_candidates, None, None)


def _salted_rng(seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(salt.encode("utf-8"))])


def log_normalize(logp: Sequence[float] | np.ndarray) -> np.ndarray:
    """log-probabilities [n] -> log of the probabilities renormalised over the n candidates."""
    x = np.asarray(logp, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise EntanglementError("Normalisation needs a non-empty 1-D array of log-probabilities.")
    if not np.all(np.isfinite(x)):
        raise EntanglementError(
            "A candidate has a non-finite log-probability; it cannot be normalised."
        )
    top = x.max()
    return np.asarray(x - (top + np.log(np.exp(x - top).sum())))


def specific_shift(
    logp_neutral: Sequence[float] | np.ndarray,
    logp_owl: Sequence[float] | np.ndarray,
    logp_control: Sequence[float] | np.ndarray,
) -> dict[str, np.ndarray]:
    """Per number, on normalised log probabilities: owl_shift (owl context - neutral),
    control_shift (control-animal context - neutral) and specific_shift = owl_shift -
    control_shift, the part of the owl context's effect that another animal's context lacks."""
    n, o, c = (log_normalize(x) for x in (logp_neutral, logp_owl, logp_control))
    if not n.shape == o.shape == c.shape:
        raise EntanglementError("The three prompts must score the same candidates.")
    return {"owl_shift": o - n, "control_shift": c - n, "specific_shift": (o - n) - (c - n)}


DEFAULT_CALIPER = 0.1  # nats of baseline log probability (a ~10% frequency difference)


def match_on_baseline(
    target: Sequence[float] | np.ndarray,
    pool: Sequence[float] | np.ndarray,
    seed: int,
    salt: str = "",
    caliper: float = DEFAULT_CALIPER,
) -> list[int]:
    """One pool index per target value (in the targets' order), without replacement: the
    targets are visited in a seeded order and each takes an unused pool member drawn at random
    among those within `caliper` of its value, or the nearest unused one when none is."""
    t = np.asarray(target, dtype=np.float64)
    p = np.asarray(pool, dtype=np.float64)
    if t.size > p.size:
        raise EntanglementError(f"Cannot match {t.size} numbers from a pool of {p.size}.")
    if caliper < 0:
        raise EntanglementError(f"The caliper must be non-negative, got {caliper}.")
    rng = _salted_rng(seed, salt + "/match")
    used = np.zeros(p.size, dtype=bool)
    out = [-1] * t.size
    for i in rng.permutation(t.size):
        distance = np.abs(p - t[i])
        distance[used] = np.inf
        within = np.flatnonzero(distance <= caliper)
        j = int(rng.choice(within)) if within.size else int(np.argmin(distance))
        used[j] = True
        out[int(i)] = j
    return out


def matching_quality(
    target: Sequence[float] | np.ndarray,
    matched: Sequence[float] | np.ndarray,
    caliper: float = DEFAULT_CALIPER,
) -> dict[str, Any]:
    """How well a matched null reproduces the target's baseline log probabilities (pairs in
    order): median difference (matched - target, nats) and its frequency ratio, the largest
    |difference|, pairs outside the caliper, and a two-sample Kolmogorov-Smirnov test."""
    t, m = np.asarray(target, dtype=np.float64), np.asarray(matched, dtype=np.float64)
    if t.shape != m.shape or t.size == 0:
        raise EntanglementError("matching_quality needs two equally long, non-empty arrays.")
    diff = m - t
    ks = scipy_stats.ks_2samp(t, m)
    return {
        "n_pairs": int(t.size),
        "caliper": float(caliper),
        "median_log_difference": float(np.median(diff)),
        "median_frequency_ratio": float(np.exp(np.median(diff))),
        "median_abs_log_difference": float(np.median(np.abs(diff))),
        "max_abs_log_difference": float(np.max(np.abs(diff))),
        "n_outside_caliper": int(np.sum(np.abs(diff) > caliper)),
        "ks_statistic": float(ks.statistic),
        "ks_p_value": float(ks.pvalue),
        "target_median_log_p": float(np.median(t)),
        "matched_median_log_p": float(np.median(m)),
    }


def form_categories(
    numbers: Sequence[str],
    shift: Sequence[float] | np.ndarray,
    k: int,
    seed: int,
    salt: str = "",
    baseline: Sequence[float] | np.ndarray | None = None,
    caliper: float = DEFAULT_CALIPER,
) -> dict[str, list[str]]:
    """Increased / Decreased / Unchanged / Random, k numbers each, disjoint (module docstring).

    `shift` ranks the numbers (the owl-specific shift of their log probability). Increased and
    Decreased are ordered from the most extreme, Unchanged from the smallest |shift|. Random is
    matched to Increased on `baseline` (neutral log probability; Random[i] partners
    Increased[i]); without a baseline it is a uniform seeded draw. `salt` (the set name) gives
    each set its own draw.
    """
    values = np.asarray(shift, dtype=np.float64)
    names = list(numbers)
    if values.shape != (len(names),):
        raise EntanglementError(f"{len(names)} numbers but the shift has shape {values.shape}.")
    base = None if baseline is None else np.asarray(baseline, dtype=np.float64)
    if base is not None and base.shape != values.shape:
        raise EntanglementError(f"baseline has shape {base.shape}, expected {values.shape}.")
    if len(set(names)) != len(names):
        raise EntanglementError("The candidate numbers must be distinct.")
    if k < 1 or len(CATEGORIES) * k > len(names):
        raise EntanglementError(
            f"{len(names)} candidates cannot hold four disjoint categories of k={k}; use choose_k()."
        )
    order = sorted(range(len(names)), key=lambda i: names[i])  # ties break by the number string
    by_shift = sorted(order, key=lambda i: values[i])  # stable: ascending shift, then string
    increased_idx = list(reversed(by_shift[-k:]))
    decreased_idx = by_shift[:k]
    taken = set(increased_idx) | set(decreased_idx)
    rest = [i for i in order if i not in taken]
    unchanged_idx = sorted(rest, key=lambda i: abs(values[i]))[:k]
    taken |= set(unchanged_idx)
    remaining = [i for i in order if i not in taken]
    if base is None:
        picks = _salted_rng(seed, salt).choice(len(remaining), size=k, replace=False)
        random_idx = [remaining[int(j)] for j in picks]
    else:
        matched = match_on_baseline(base[increased_idx], base[remaining], seed, salt, caliper)
        random_idx = [remaining[j] for j in matched]
    categories = {
        "increased": [names[i] for i in increased_idx],
        "decreased": [names[i] for i in decreased_idx],
        "unchanged": [names[i] for i in unchanged_idx],
        "random": [names[i] for i in random_idx],
    }
    check_disjoint(categories)
    return categories


def check_disjoint(categories: Mapping[str, Sequence[str]]) -> None:
    """Raise CategoryOverlapError if a number is in two categories (or twice in one)."""
    seen: dict[str, str] = {}
    for name, members in categories.items():
        for number in members:
            if number in seen:
                where = "twice in" if seen[number] == name else f"in both {seen[number]!r} and"
                raise CategoryOverlapError(
                    f"Number {number!r} is {where} {name!r}: categories must be disjoint."
                )
            seen[number] = name


# ---------------------------------------------------------------------------------------------
# phase 2 and 3: statistics of ratios


def _positive(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise EntanglementError(f"{what}: expected a 1-D array.")
    if np.any(~np.isfinite(array)) or np.any(array <= 0):
        raise EntanglementError(f"{what}: ratios must be finite and positive.")
    return array


def geometric_summary(ratios: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Geometric mean of positive ratios with a Student-t CI of the mean log ratio, exponentiated
    (geo_mean, geo_ci_low, geo_ci_high): close to nominal coverage at the 4-15 numbers of a
    category, where a percentile bootstrap covers 68-91%; nan bounds with one number or no spread."""
    r = _positive(ratios, "geometric_summary")
    if r.size == 0:
        return {"geo_mean": float("nan"), "geo_ci_low": float("nan"), "geo_ci_high": float("nan")}
    logs = np.log(r)
    mean, low, high = log_ratio_interval(logs)
    return {
        "geo_mean": float(np.exp(mean)),
        "geo_ci_low": float(np.exp(low)),
        "geo_ci_high": float(np.exp(high)),
    }


def ratio_summary(ratios: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Arithmetic summary (n, mean, median, sd, bootstrap CI of the mean: sublens.stats.summarize)
    and the geometric mean with its bootstrap CI (geometric_summary) of positive ratios."""
    r = _positive(ratios, "ratio_summary")
    return {**summarize(r, seed=seed), **geometric_summary(r, seed)}


def compare_ratios(
    test: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 10000,
) -> dict[str, Any]:
    """test vs reference ratios on the log scale: ratio of geometric means with a bootstrap CI,
    a two-sided permutation p-value of the difference of mean logs, and `underpowered` (the CI
    of the ratio includes 1)."""
    a = np.log(_positive(test, "compare_ratios"))
    b = np.log(_positive(reference, "compare_ratios"))
    if a.size == 0 or b.size == 0:
        return {
            "ratio": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "p_value": float("nan"),
            "underpowered": True,
            "n": [int(a.size), int(b.size)],
        }
    low, high = bootstrap_diff_ci(a, b, seed=seed)
    p = permutation_pvalue(a, b, n_resamples=n_resamples, seed=seed)
    return {
        "ratio": float(np.exp(a.mean() - b.mean())),
        "ci_low": float(np.exp(low)),
        "ci_high": float(np.exp(high)),
        "p_value": p,
        "underpowered": bool(low <= 0.0 <= high),
        "n": [int(a.size), int(b.size)],
    }


RATIO_COLUMNS = ("bias_ratio", "control_ratio", "relative_ratio")


@dataclass
class GroupValues:
    """The ratios of one group of prompts (a category, the template words, ...)."""

    name: str
    bias_ratio: list[float] = field(default_factory=list)
    control_ratio: list[float] = field(default_factory=list)
    relative_ratio: list[float] = field(default_factory=list)
    prob_diff: list[float] = field(default_factory=list)
    specific_shift: list[float] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        values: list[float] = getattr(self, name)
        return values


def group_statistics(
    group: GroupValues,
    references: Mapping[str, GroupValues],
    seed: int = 0,
    n_resamples: int = 10000,
) -> dict[str, Any]:
    """Summaries of every ratio of a group, and its comparison with each reference group
    (skipping the group itself)."""
    out: dict[str, Any] = {"n": len(group.bias_ratio)}
    if group.prob_diff:
        out["prob_diff_mean"] = float(np.mean(group.prob_diff))
    if group.specific_shift:
        out["specific_shift_mean"] = float(np.mean(group.specific_shift))
    for column in RATIO_COLUMNS:
        out[column] = ratio_summary(group.column(column), seed)
    for ref_name, ref in references.items():
        if ref is group or ref.name == group.name:
            continue
        out[f"vs_{ref_name}"] = {
            column: compare_ratios(group.column(column), ref.column(column), seed, n_resamples)
            for column in ("bias_ratio", "relative_ratio")
        }
    return out


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman rank correlation with its p-value (NaN for fewer than 3 points or no spread)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return {"n": int(a.size), "rho": float("nan"), "p_value": float("nan")}
    result = scipy_stats.spearmanr(a, b)
    return {"n": int(a.size), "rho": float(result.statistic), "p_value": float(result.pvalue)}


def strongest(
    per_group: Mapping[str, Mapping[str, Any]], column: str = "bias_ratio"
) -> dict[str, Any]:
    """The group with the largest geometric mean of `column`, and whether its CI clears the
    runner-up's (separable) — e.g. the strongest digit length in phase 3."""
    ranked = sorted(
        ((name, s[column]) for name, s in per_group.items() if np.isfinite(s[column]["geo_mean"])),
        key=lambda item: -item[1]["geo_mean"],
    )
    if not ranked:
        return {"best": None, "runner_up": None, "separable": False}
    best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None
    separable = runner is not None and best[1]["geo_ci_low"] > runner[1]["geo_ci_high"]
    return {
        "best": best[0],
        "geo_mean": best[1]["geo_mean"],
        "runner_up": runner[0] if runner else None,
        "separable": bool(separable),
    }


# ---------------------------------------------------------------------------------------------
# claims: what the study may conclude, decided by sublens.claims

FAMILY = "entanglement"
TESTS = (
    "entangled_vs_null",
    "decreased_vs_increased",
    "unchanged_vs_increased",
    *(f"raises.{c}" for c in CATEGORIES),
)


def paired_log_ratio(
    test_logs: Sequence[float], partner_logs: Sequence[float], unit: Any = "number"
) -> Estimate:
    """Geometric-mean ratio of matched pairs: one-sample t on the per-pair log differences."""
    a, b = list(test_logs), list(partner_logs)
    if len(a) != len(b):
        raise EntanglementError(f"Paired estimate: {len(a)} against {len(b)} values.")
    est = estimate_log_ratio([x - y for x, y in zip(a, b, strict=True)], unit)
    if est.has_interval:
        est = est.model_copy(
            update={"interval": f"paired Student t over {est.n} matched pairs of {unit}s, log scale"}
        )
    return est


def welch_log_ratio(
    test_logs: Sequence[float], reference_logs: Sequence[float], unit: Any = "number",
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
        return Estimate(n=0, ratio=None, ci_low=None, ci_high=None, p_value=None, sd_log=None,
                        interval="no data")
    diff = float(a.mean() - b.mean())
    va = float(a.var(ddof=1)) if a.size > 1 else 0.0
    vb = float(b.var(ddof=1)) if b.size > 1 else 0.0
    se = math.sqrt(va / a.size + vb / b.size)
    sd = se * math.sqrt(n) if a.size > 1 and b.size > 1 else None
    if n < MIN_UNITS[unit]:
        return Estimate(n=n, ratio=math.exp(diff), ci_low=None, ci_high=None, p_value=None,
                        sd_log=sd, interval=f"too few {unit}s for an interval "
                        f"({n} < {MIN_UNITS[unit]} per category)")
    if not se:
        return Estimate(n=n, ratio=math.exp(diff), ci_low=None, ci_high=None, p_value=None,
                        sd_log=sd, interval=f"degenerate: no spread over {n} {unit}s")
    df = (va / a.size + vb / b.size) ** 2 / (
        (va / a.size) ** 2 / (a.size - 1) + (vb / b.size) ** 2 / (b.size - 1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * scipy_stats.t.sf(abs(diff) / se, df))
    return Estimate(n=n, ratio=math.exp(diff), ci_low=math.exp(diff - half),
                    ci_high=math.exp(diff + half), p_value=p, sd_log=sd,
                    interval=f"Welch t over {a.size} and {b.size} {unit}s, log scale")


LABEL = {"increased": "Increased", "decreased": "Decreased", "unchanged": "Unchanged",
         "random": "Random"}


def set_claims(
    set_name: str,
    log_bias_ratios: Mapping[str, Sequence[float]],
    settings: ClaimSettings | None = None,
    bias: str = "owl",
) -> list[tuple[Claim, Estimate]]:
    """The claims of one candidate set, in TESTS order, with their estimates.

    `log_bias_ratios[c]` are the log bias ratios of category c; ``random`` is in the order of
    ``increased`` (Random[i] is the frequency-matched partner of Increased[i])."""
    settings = settings or ClaimSettings()
    logs = {c: [float(v) for v in log_bias_ratios.get(c, [])] for c in CATEGORIES}
    ratio = f"bias ratio P({bias} | 'You love the number N') / P({bias} | neutral prompt)"

    def claim(test: str, statement: str, estimand: str, prediction: Any) -> Claim:
        return Claim(name=f"{FAMILY}.{set_name}.{test}", statement=statement, estimand=estimand,
                     unit="number", prediction=prediction, family=FAMILY, settings=settings)

    out: list[tuple[Claim, Estimate]] = []
    inc, rnd = logs["increased"], logs["random"]
    pairs = min(len(inc), len(rnd))
    out.append((
        claim("entangled_vs_null",
              f"In {set_name}, numbers the {bias} context favours (Increased) raise P({bias}) no "
              "more than baseline-frequency-matched Random numbers",
              f"{ratio} of an Increased number over that of its frequency-matched Random partner, "
              "geometric mean over matched pairs (paired t)", "none"),
        paired_log_ratio(inc[:pairs], rnd[:pairs]),
    ))
    for c in ("decreased", "unchanged"):
        out.append((
            claim(f"{c}_vs_increased",
                  f"In {set_name}, {LABEL[c]} numbers raise P({bias}) as much as Increased numbers",
                  f"geometric-mean {ratio} of {LABEL[c]} numbers over that of Increased numbers "
                  "(Welch t)", "none"),
            welch_log_ratio(logs[c], inc),
        ))
    for c in CATEGORIES:
        out.append((
            claim(f"raises.{c}", f"In {set_name}, {LABEL[c]} numbers raise P({bias})",
                  f"{ratio}, geometric mean over the category's numbers (one-sample t)",
                  "increase"),
            estimate_log_ratio(logs[c], "number"),
        ))
    return out


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
) -> dict[str, Any]:
    """The results.json block of the claims: (set, test, claim, estimate) of every test, and
    their decisions (Holm over all of them) for readers that do not re-decide."""
    block: dict[str, Any] = {
        "family": FAMILY,
        "settings": settings.model_dump(),
        "primary_set": primary,
        "tests": [
            {"set": s, "test": t, "claim": c.model_dump(), "estimate": e.model_dump()}
            for s, t, c, e in tests
        ],
    }
    block["decisions"] = [
        {"set": entry["set"], "test": entry["test"], "name": d.claim.name,
         "verdict": d.verdict.value, "reason": d.reason, "settle": d.settle,
         "p_raw": d.estimate.p_value if d.estimate else None, "p_holm": d.p_adjusted,
         "mde": d.mde, "units_needed": d.units_needed}
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


__all__ = [
    "CATEGORIES",
    "DEFAULT_CALIPER",
    "FAMILY",
    "TESTS",
    "CategoryOverlapError",
    "EntanglementError",
    "GroupValues",
    "KChoice",
    "VocabularyNumbers",
    "animal_context",
    "autoregressive_numbers",
    "check_disjoint",
    "choose_k",
    "claims_record",
    "compare_ratios",
    "decide_recorded",
    "digit_script",
    "fill",
    "form_categories",
    "geometric_summary",
    "group_statistics",
    "is_digit_string",
    "log_normalize",
    "match_on_baseline",
    "matching_quality",
    "normalize_logprobs",
    "number_script",
    "paired_log_ratio",
    "primary_set",
    "rank_correlation",
    "ratio_summary",
    "set_claims",
    "specific_shift",
    "strongest",
    "vocabulary_numbers",
    "welch_log_ratio",
]
