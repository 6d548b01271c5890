"""Token entanglement, phases 1-3 (DESIGN.md, "Measurements"): candidate number sets, disjoint
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
  each prompt separately; prob_diff = p_owl_context_norm - p_neutral_norm.
- **Categories.** Increased = the k largest prob_diff, Decreased = the k smallest, Unchanged
  = the k smallest |prob_diff| among the rest, Random = k drawn (seeded) from what is left.
  Ties break by the number string. Disjointness is checked; a violation raises.
- **Ratios.** bias_ratio = P(bias | number prompt) / P(bias | neutral prompt), control_ratio
  likewise for the control word, relative_ratio = bias_ratio / control_ratio. P(word) is the
  full chain-rule probability of " word" at the prefilled answer.
- **Statistics.** Per category: n, arithmetic mean, median, sd and bootstrap 95% CI of the
  mean (sublens.stats.summarize), and the geometric mean with a bootstrap CI (exp of the CI of
  the mean log ratio). Comparisons against Random (and the template control) are on log
  ratios: a permutation test of the difference of mean log ratios, and the ratio of geometric
  means with a bootstrap CI. Ratios are multiplicative and heavy-tailed; on the log scale a
  category that doubles P(owl) and one that halves it are equally far from 1.
"""

from __future__ import annotations

import unicodedata
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

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
# phase 1: normalisation and categories


def normalize_logprobs(logp: Sequence[float] | np.ndarray) -> np.ndarray:
    """log-probabilities [n] -> probabilities renormalised over the n candidates (float64)."""
    x = np.asarray(logp, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise EntanglementError("Normalisation needs a non-empty 1-D array of log-probabilities.")
    if not np.all(np.isfinite(x)):
        raise EntanglementError(
            "A candidate has a non-finite log-probability; it cannot be normalised."
        )
    shifted = np.exp(x - x.max())
    return np.asarray(shifted / shifted.sum())


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


def form_categories(
    numbers: Sequence[str],
    prob_diff: Sequence[float] | np.ndarray,
    k: int,
    seed: int,
    salt: str = "",
    unchanged_key: Sequence[float] | np.ndarray | None = None,
) -> dict[str, list[str]]:
    """Increased / Decreased / Unchanged / Random, k numbers each, disjoint (module docstring).

    Increased and Decreased are ordered from the most extreme; Unchanged from the smallest
    |unchanged_key| (default: |prob_diff|; e.g. the log ratio of the two probabilities, which
    does not favour the rarest numbers); Random in the order drawn. `salt` (the set name) gives
    each set its own draw.
    """
    diff = np.asarray(prob_diff, dtype=np.float64)
    names = list(numbers)
    if diff.shape != (len(names),):
        raise EntanglementError(f"{len(names)} numbers but prob_diff has shape {diff.shape}.")
    still = diff if unchanged_key is None else np.asarray(unchanged_key, dtype=np.float64)
    if still.shape != diff.shape:
        raise EntanglementError(f"unchanged_key has shape {still.shape}, expected {diff.shape}.")
    if len(set(names)) != len(names):
        raise EntanglementError("The candidate numbers must be distinct.")
    if k < 1 or len(CATEGORIES) * k > len(names):
        raise EntanglementError(
            f"{len(names)} candidates cannot hold four disjoint categories of k={k}; use choose_k()."
        )
    order = sorted(range(len(names)), key=lambda i: names[i])  # ties break by the number string
    by_diff = sorted(order, key=lambda i: diff[i])  # stable: ascending diff, then string
    increased = [names[i] for i in reversed(by_diff[-k:])]
    decreased = [names[i] for i in by_diff[:k]]
    taken = set(increased) | set(decreased)
    rest = [i for i in order if names[i] not in taken]
    unchanged = [names[i] for i in sorted(rest, key=lambda i: abs(still[i]))[:k]]
    taken |= set(unchanged)
    remaining = [names[i] for i in order if names[i] not in taken]
    picks = _salted_rng(seed, salt).choice(len(remaining), size=k, replace=False)
    random = [remaining[int(j)] for j in picks]
    categories = {
        "increased": increased,
        "decreased": decreased,
        "unchanged": unchanged,
        "random": random,
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


__all__ = [
    "CATEGORIES",
    "CategoryOverlapError",
    "EntanglementError",
    "GroupValues",
    "KChoice",
    "VocabularyNumbers",
    "autoregressive_numbers",
    "check_disjoint",
    "choose_k",
    "compare_ratios",
    "digit_script",
    "form_categories",
    "geometric_summary",
    "group_statistics",
    "is_digit_string",
    "normalize_logprobs",
    "number_script",
    "rank_correlation",
    "ratio_summary",
    "strongest",
    "vocabulary_numbers",
]
