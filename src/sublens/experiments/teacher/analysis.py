"""The teacher experiment's own computations, from records alone (no model): what the sampled
answers hold, and the flat rows of the models table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sublens.answers import mentions
from sublens.experiments.teacher.results import AnswerData, TeacherResults
from sublens.tables import preference_columns


def data_summary(records: Sequence[dict[str, Any]], trait: str, folder: str) -> AnswerData:
    """How many answers were sampled, how many name the trait outright (context distillation
    should carry it beyond them), why they stopped, and how long they are."""
    hits = sum(mentions(r["answer"], trait) for r in records)
    return AnswerData(
        folder=folder,
        n_answers=len(records),
        trait_mention_rate=hits / len(records) if records else None,
        finish_reasons=dict(Counter(r["finish_reason"] for r in records)),
        mean_answer_tokens=sum(r["n_tokens"] for r in records) / max(1, len(records)),
    )


def model_rows(results: TeacherResults) -> list[dict[str, Any]]:
    """One row per measured model for models.parquet: its preference columns and perplexity."""
    return [
        {
            "model": name,
            **preference_columns(m.preference.model_dump()),
            "perplexity": m.perplexity.perplexity if m.perplexity else None,
        }
        for name, m in results.measurements.named().items()
    ]
