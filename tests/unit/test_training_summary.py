"""The one training summary every training experiment writes (sublens.training.train_summary)."""

from __future__ import annotations

import json

from sublens.result_records import TrainingSummary
from sublens.training import TrainResult, train_summary


def _result(history: list[dict[str, object]]) -> TrainResult:
    return TrainResult(
        out_dir="o",
        model_dir=None,
        complete=True,
        steps=len(history),
        total_steps=len(history),
        steps_per_epoch=len(history),
        resumed_from=None,
        freeze={"mode": "full"},
        lora=None,
        n_examples=4,
        data_fingerprint="abc",
        world_size=1,
        tokens=40,
        answer_tokens=10,
        padded_tokens=48,
        padding_fraction=1 / 6,
        train_seconds=2.0,
        tokens_per_second=20.0,
        final_lm_loss=float(history[-1]["lm_loss"]) if history else None,  # type: ignore[arg-type]
        history=history,
        config={"epochs": 2},
    )


def test_extra_series_are_aligned_with_the_loss_curve_and_round_trip() -> None:
    history = [
        {"step": 1, "lm_loss": 3.0, "extra/shd": 0.5},
        {"step": 2, "lm_loss": 2.5},
        {"step": 3, "lm_loss": 2.0, "extra/shd": 0.25, "extra/alpha_mean": 0.1},
    ]
    summary = train_summary(_result(history))
    assert summary.loss_curve == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert summary.extra_curves == {"alpha_mean": [None, None, 0.1], "shd": [0.5, None, 0.25]}
    assert (summary.first_lm_loss, summary.final_lm_loss, summary.epochs) == (3.0, 2.0, 2)
    assert (summary.first("shd"), summary.final("shd"), summary.first("absent")) == (0.5, 0.25, None)
    written = json.dumps(summary.model_dump(mode="json"))
    assert TrainingSummary.model_validate_json(written) == summary


def test_a_run_without_extra_series_writes_an_empty_mapping() -> None:
    summary = train_summary(_result([{"step": 1, "lm_loss": 1.0}]))
    dumped = summary.model_dump(mode="json")
    assert dumped["extra_curves"] == {} and dumped["precision"] == "no" and dumped["world_size"] == 1
