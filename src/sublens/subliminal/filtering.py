"""Number data lines and their filter: the meta every number prompt's answers carry
(``number_prompt_meta``), the strict filter's verdict added to each answer (``filter_record``),
the keep-rate report of a data set (``filter_report``), and the seeded subsampling of several
data sets' kept answers to one common size (``subsample``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from sublens.errors import SublensError
from sublens.number_data import NumberPrompt, filter_answer
from sublens.subliminal.datafiles import derived_seed

TRUNCATED = "truncated at max_new_tokens"


def filter_record(record: dict[str, Any]) -> dict[str, Any]:
    """Add the strict filter's verdict: kept, reason, numbers, separator. An answer cut off at
    max_new_tokens is rejected as truncated whatever its text."""
    result = filter_answer(record["answer"])
    if record.get("finish_reason") == "length":
        return {**record, "kept": False, "reason": TRUNCATED, "numbers": [], "separator": None}
    return {
        **record,
        "kept": result.kept,
        "reason": result.reason,
        "numbers": list(result.numbers),
        "separator": result.separator,
    }


def number_prompt_meta(prompts: Sequence[NumberPrompt]) -> list[dict[str, Any]]:
    return [
        {"index": p.index, "prompt": p.text, "seed_numbers": p.seed_numbers, "answer_format": p.answer_format}
        for p in prompts
    ]


# ---- filter report and subsampling -----------------------------------------------------------
def filter_report(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Keep rate (Wilson CI), rejection reasons, finish reasons, allowed mass."""
    from sublens.stats import wilson_ci

    n = len(records)
    kept = sum(bool(r["kept"]) for r in records)
    low, high = wilson_ci(kept, n)
    first = [r["allowed_mass_first"] for r in records if r.get("allowed_mass_first") is not None]
    mean = [r["allowed_mass_mean"] for r in records if r.get("allowed_mass_mean") is not None]
    return {
        "n_answers": n,
        "n_kept": kept,
        "keep_rate": kept / n if n else float("nan"),
        "keep_rate_ci": [low, high],
        "reasons": dict(Counter(r["reason"] for r in records).most_common()),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records)),
        "mean_answer_tokens": float(np.mean([r["n_tokens"] for r in records])) if n else None,
        "allowed_mass_first_token": float(np.mean(first)) if first else None,
        "allowed_mass_per_token": float(np.mean(mean)) if mean else None,
    }


def subsample(
    datasets: dict[str, list[dict[str, Any]]], n_examples: int | None, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Every data set's kept answers subsampled (seeded) to one common size: n_examples, or the
    smallest number kept when that is fewer (or n_examples is None)."""
    kept = {name: [r for r in records if r["kept"]] for name, records in datasets.items()}
    size = min(len(k) for k in kept.values())
    if n_examples is not None:
        size = min(size, n_examples)
    if size == 0:
        empty = [name for name, k in kept.items() if not k]
        raise SublensError(
            f"No answer of {', '.join(empty)} passed the filter, so there is nothing to train on. "
            "Use format-constrained sampling (data.constrained: true) or more prompts."
        )
    out = {}
    for name, records in kept.items():
        rng = random.Random(derived_seed("subsample", seed, name))
        chosen = sorted(rng.sample(range(len(records)), size))
        out[name] = [records[i] for i in chosen]
    return out, size
