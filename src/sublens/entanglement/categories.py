"""Token entanglement, phase 1: normalisation of each candidate set, the owl-specific shift, and
the disjoint categories (Increased, Decreased, Unchanged, and Random matched to Increased on
baseline frequency); definitions in the `sublens.entanglement` docstring.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from sublens.entanglement.definitions import CATEGORIES, CategoryOverlapError, EntanglementError


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
        raise EntanglementError("A candidate has a non-finite log-probability; it cannot be normalised.")
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
                raise CategoryOverlapError(f"Number {number!r} is {where} {name!r}: categories must be disjoint.")
            seen[number] = name
