"""Entanglement tied to transfer: are the numbers an owl context makes more likely (the
entanglement study's ``increased`` category) over-represented in the owl teacher's data, and
does a student still pick up the trait when they are removed?

Token entanglement (Zur et al. 2025) explains subliminal transfer through numbers whose
probability rises with the trait: the teacher's data would carry more of them, and a student
trained on them would have the trait pulled up with them. Two direct tests:

- **Enrichment.** The share of answers holding at least one ``increased`` number, owl data over
  control data (unit: the answer; numbers within one answer are not independent), as a risk
  ratio with Katz's log interval and Fisher's exact test; the same for the study's ``random``
  category, a matched reference set of the same size.
- **Filtering.** Owl students trained on the owl data with every answer holding an ``increased``
  number removed, against owl students trained on the owl data with every answer holding a
  ``random``-category number removed, both subsampled to one size (`sublens.experiments.subliminal`).
  If entanglement carried the transfer, the first would lose it and the second keep it.

Numbers match as written (``05`` is not ``5``), as whole numbers in the answer.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from sublens.errors import ConfigError
from sublens.runs import check_upstream_finished, read_json
from sublens.stats import two_proportion_pvalue

ENTANGLED, MATCHED = "increased", "random"  # the entanglement study's category names
_NUMBER = re.compile(r"\d+")


def read_number_sets(run_dir: str | Path, set_name: str) -> dict[str, list[str]]:
    """The ``increased`` and ``random`` numbers of one set of a finished entanglement run."""
    path = Path(run_dir).expanduser()
    results_file = path / "results.json"
    if not results_file.is_file():
        raise ConfigError(
            f"{str(path)!r} has no results.json: give the run directory of a finished "
            "entanglement run (`sublens run entanglement ...`)."
        )
    check_upstream_finished(path, "entanglement")
    categories = (read_json(results_file).get("categories") or {}).get(set_name)
    if not isinstance(categories, dict) or not all(isinstance(categories.get(c), list) for c in (ENTANGLED, MATCHED)):
        sets = ", ".join(sorted(read_json(results_file).get("categories") or {})) or "none"
        raise ConfigError(
            f"The entanglement run {str(path)!r} has no categorised set {set_name!r} with "
            f"{ENTANGLED!r} and {MATCHED!r} numbers; its sets: {sets}."
        )
    return {c: [str(n) for n in categories[c]] for c in (ENTANGLED, MATCHED)}


def answer_numbers(answer: str) -> list[str]:
    """The whole numbers of an answer, as written."""
    return _NUMBER.findall(answer)


def holds_any(record: dict[str, Any], numbers: set[str]) -> bool:
    return any(n in numbers for n in answer_numbers(str(record["answer"])))


def rate_ratio(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> dict[str, Any]:
    """Risk ratio (k1/n1) / (k2/n2) with Katz's log interval (0.5 added to every cell when one
    is empty) and Fisher's exact p."""
    if min(n1, n2) == 0:
        return {"ratio": None, "ci_low": None, "ci_high": None, "p_fisher": None}
    a, b = (k1, k2) if min(k1, k2, n1 - k1, n2 - k2) > 0 else (k1 + 0.5, k2 + 0.5)
    m1, m2 = (n1, n2) if (a, b) == (k1, k2) else (n1 + 1, n2 + 1)
    log_ratio = math.log((a / m1) / (b / m2))
    se = math.sqrt(1 / a - 1 / m1 + 1 / b - 1 / m2)
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = two_proportion_pvalue(k1, n1, k2, n2)  # answers as independent: true with one answer per prompt
    return {
        "ratio": math.exp(log_ratio),
        "ci_low": math.exp(log_ratio - z * se),
        "ci_high": math.exp(log_ratio + z * se),
        "p_fisher": p,
    }


def enrichment(
    owl: Sequence[dict[str, Any]], control: Sequence[dict[str, Any]], number_sets: dict[str, list[str]]
) -> dict[str, Any]:
    """Per category: answers holding one of its numbers, in the owl and the control data, and
    the owl/control risk ratio; plus the number-level shares (descriptive)."""
    out: dict[str, Any] = {}
    for category, numbers in number_sets.items():
        wanted = set(numbers)
        k_owl = sum(holds_any(r, wanted) for r in owl)
        k_control = sum(holds_any(r, wanted) for r in control)
        out[category] = {
            "numbers": list(numbers),
            "owl": {"answers_with": k_owl, "answers": len(owl), "number_share": _number_share(owl, wanted)},
            "control": {
                "answers_with": k_control,
                "answers": len(control),
                "number_share": _number_share(control, wanted),
            },
            "owl_over_control": rate_ratio(k_owl, len(owl), k_control, len(control)),
        }
    return out


def _number_share(records: Iterable[dict[str, Any]], wanted: set[str]) -> float | None:
    numbers = [n for r in records for n in answer_numbers(str(r["answer"]))]
    return sum(n in wanted for n in numbers) / len(numbers) if numbers else None


def filtered_pair(
    kept: Sequence[dict[str, Any]], number_sets: dict[str, list[str]], size: int, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The owl data without answers holding an entangled number, and without answers holding a
    number of the matched random set, both subsampled (seeded) to one size: at most `size`, at
    most what the smaller one kept. Returns the two data sets and how many answers each removed."""
    without = {
        category: [r for r in kept if not holds_any(r, set(numbers))] for category, numbers in number_sets.items()
    }
    common = min(size, *(len(v) for v in without.values()))
    if common == 0:
        raise ConfigError(
            "Removing the answers that hold entangled (or random-set) numbers leaves no owl "
            "answer to train on; use another entanglement set or more prompts."
        )
    chosen = {}
    for category, records in without.items():
        rng = random.Random(f"entangled-filter:{seed}:{category}")
        chosen[category] = [records[i] for i in sorted(rng.sample(range(len(records)), common))]
    report = {"size": common, "removed": {c: len(kept) - len(v) for c, v in without.items()}, "pool": len(kept)}
    return chosen, report
